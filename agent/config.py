"""The agent's settings: command-line flags, each with an environment variable fallback.

Everything is checked here, at start, with a message that names the flag (and the
variable, when the value came from one), so a typo fails fast instead of at the first
connection attempt.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_STATE_DIR = "/var/lib/berth-agent"
DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Label keys and values as Kubernetes has them: an optional DNS prefix, a name of at most 63.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DOCKER_SCHEMES = ("unix", "tcp", "http", "https", "ssh", "npipe")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the flag and says what is expected."""


@dataclass(frozen=True)
class AgentConfig:
    server: str  # http(s) base URL of the control plane, no trailing slash
    join_token: str | None = field(repr=False)  # a secret: never printed
    name: str
    docker_host: str
    state_dir: Path
    labels: dict[str, str]
    log_level: str = "INFO"

    @property
    def session_url(self) -> str:
        """The WebSocket URL of the agent session (ws:// for http://, wss:// for https://)."""
        scheme, rest = self.server.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/agent/"

    @property
    def enroll_url(self) -> str:
        return f"{self.server}/api/v1/agents/enroll"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent",
        description="Berth node agent: runs this server's share of the cluster's containers.",
    )
    parser.add_argument("--server", help="control plane URL, e.g. https://berth.example.com [BERTH_SERVER]")
    parser.add_argument("--join-token", help="join token used to enroll this node [BERTH_JOIN_TOKEN]")
    parser.add_argument("--name", help="node name, a DNS label (default: host name) [BERTH_NODE_NAME]")
    parser.add_argument(
        "--docker-host", help=f"Docker engine URL (default: {DEFAULT_DOCKER_HOST}) [DOCKER_HOST]"
    )
    parser.add_argument(
        "--state-dir", help=f"where the credential is kept (default: {DEFAULT_STATE_DIR}) [BERTH_STATE_DIR]"
    )
    parser.add_argument("--labels", help="node labels, k=v,k2=v2 [BERTH_LABELS]")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR (default: INFO) [BERTH_LOG_LEVEL]")
    return parser


def load_config(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    hostname: str | None = None,
) -> AgentConfig:
    """Parse flags (argv) with environment fallbacks (environ); raise ConfigError if invalid.

    An unknown flag makes argparse exit with its usage message, which names the flag.
    """
    environ = os.environ if environ is None else environ
    args = build_parser().parse_args(argv)

    def pick(flag: str, var: str) -> tuple[str | None, str]:
        """The value and how to name its source in an error message."""
        value = getattr(args, flag.removeprefix("--").replace("-", "_"))
        if value is not None:
            return value, flag
        value = environ.get(var)
        if value is not None and value != "":
            return value, f"{flag} (from {var})"
        return None, f"{flag} (or {var})"

    server, where = pick("--server", "BERTH_SERVER")
    if server is None:
        raise ConfigError(f"{where} is required: the control plane URL, e.g. https://berth.example.com")
    server = _check_server(server.strip(), where)

    join_token, _ = pick("--join-token", "BERTH_JOIN_TOKEN")
    join_token = join_token.strip() if join_token else None

    name, where = pick("--name", "BERTH_NODE_NAME")
    if name is None:
        name = default_node_name(hostname)
        where = "the host name (set --name or BERTH_NODE_NAME)"
    name = name.strip()
    if not _DNS_LABEL.match(name):
        raise ConfigError(
            f"{where}: {name!r} is not a valid node name: use lower case letters, digits and '-', "
            "at most 63 characters, starting and ending with a letter or digit"
        )

    docker_host, where = pick("--docker-host", "DOCKER_HOST")
    docker_host = (docker_host or DEFAULT_DOCKER_HOST).strip()
    if urlsplit(docker_host).scheme not in _DOCKER_SCHEMES:
        raise ConfigError(
            f"{where}: {docker_host!r} is not a Docker engine URL, e.g. unix:///var/run/docker.sock "
            "or tcp://10.0.0.5:2375"
        )

    state_dir, where = pick("--state-dir", "BERTH_STATE_DIR")
    state_path = Path(state_dir or DEFAULT_STATE_DIR)
    if state_path.exists() and not state_path.is_dir():
        raise ConfigError(f"{where}: {state_path} exists and is not a directory")

    labels_text, where = pick("--labels", "BERTH_LABELS")
    labels = parse_labels(labels_text or "", where=where)

    log_level, where = pick("--log-level", "BERTH_LOG_LEVEL")
    log_level = (log_level or "INFO").upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"{where}: {log_level!r} is not one of DEBUG, INFO, WARNING, ERROR")

    return AgentConfig(
        server=server,
        join_token=join_token,
        name=name,
        docker_host=docker_host,
        state_dir=state_path,
        labels=labels,
        log_level=log_level,
    )


def default_node_name(hostname: str | None = None) -> str:
    """The host name, lower-cased, without its domain (a node name is a single DNS label)."""
    return (hostname or socket.gethostname()).split(".", 1)[0].lower()


def parse_labels(text: str, *, where: str = "--labels") -> dict[str, str]:
    """Parse "k=v,k2=v2" into a dict; keys and values follow the Kubernetes label rules."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep:
            raise ConfigError(f"{where}: {item!r} is not of the form key=value")
        if not _valid_label_key(key):
            raise ConfigError(
                f"{where}: {key!r} is not a valid label key: letters, digits, '-', '_' and '.', "
                "at most 63 characters, optionally prefixed by a DNS name and '/'"
            )
        if not _LABEL_VALUE.match(value):
            raise ConfigError(
                f"{where}: the value of {key!r} ({value!r}) is not valid: letters, digits, '-', '_' "
                "and '.', at most 63 characters, starting and ending with a letter or digit"
            )
        if key in labels:
            raise ConfigError(f"{where}: label {key!r} is given twice")
        labels[key] = value
    return labels


def _valid_label_key(key: str) -> bool:
    prefix, slash, name = key.rpartition("/")
    if slash and not _LABEL_PREFIX.match(prefix):
        return False
    return bool(_LABEL_NAME.match(name))


def _check_server(server: str, where: str) -> str:
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}: {server!r} is not an http:// or https:// URL")
    if parts.query or parts.fragment:
        raise ConfigError(f"{where}: {server!r} must not have a query or fragment")
    return server.rstrip("/")
