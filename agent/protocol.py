"""The wire format of the agent session (docs/agent-protocol.md, section 2).

Builds the frames the agent sends and parses the ones it receives into dataclasses,
validating everything that ends up in a container name or an engine call. Pure: the
session does the sending.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent import __version__
from agent.probes import Exec, Handler, HttpGet, Probe, TcpSocket
from agent.replicas import (
    DEFAULT_TERMINATION_GRACE,
    MAX_TERMINATION_GRACE,
    DesiredReplica,
    PortMapping,
    ReplicaKey,
    Resources,
    RestartPolicy,
)
from agent.runtime import MAX_IMAGES, EngineInfo
from agent.status import ReplicaStatus
from agent.stream_protocol import STREAM_FRAME_TYPES, StreamFrame, parse_stream_frame

DEFAULT_HEARTBEAT_INTERVAL = 5.0
# What this agent understands beyond the first version of the protocol (sent in `hello`).
FEATURES = ("desired.partial", "settings")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[^=\x00]+$")
# An HTTP probe's path goes into a request line: absolute, no spaces or control characters.
_HTTP_PATH = re.compile(r"^/[\x21-\x7e]*$")
_MAX_INT32 = 2**31 - 1  # probe numbers are int32 (as Kubernetes'): no float overflow in timers
# (field, default, minimum) of a probe's numbers (protocol section 2).
_PROBE_NUMBERS = (
    ("initial_delay_seconds", 0, 0),
    ("period_seconds", 10, 1),
    ("timeout_seconds", 1, 1),
    ("failure_threshold", 3, 1),
    ("success_threshold", 1, 1),
)
_PROBE_HANDLERS = ("http_get", "tcp_socket", "exec")


class ProtocolError(ValueError):
    """A frame the agent cannot act on; the message says which field and why."""


@dataclass(frozen=True)
class Welcome:
    node: str
    heartbeat_interval: float
    features: tuple[str, ...] = ()  # what the control plane understands beyond version 1


@dataclass(frozen=True)
class DesiredSet:
    """A desired set. Full (`names` is None): `replicas` is the whole set. Partial: `names`
    is the whole set, and `replicas` carries only the entries the agent may lack; the
    others are the ones it already has (a replica's entry never changes)."""

    generation: int
    replicas: tuple[DesiredReplica, ...]
    names: tuple[ReplicaKey, ...] | None = None


@dataclass(frozen=True)
class Settings:
    """New settings for this connection: the heartbeat interval (the control plane scales it
    with the size of the fleet). None: unchanged (a later settings frame may carry others)."""

    heartbeat_interval: float | None = None


@dataclass(frozen=True)
class UnknownFrame:
    """A frame type this agent does not know: ignored, so the server can add new ones."""

    type: str


def hello_frame(engine: EngineInfo, labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "type": "hello",
        "agent_version": __version__,
        "engine_version": engine.version,
        "capacity": {"cpu": engine.cpu_millis, "memory": engine.memory_bytes},
        "labels": dict(labels),
        "images": list(engine.images[:MAX_IMAGES]),
        "features": list(FEATURES),
    }


def desired_request_frame(generation: int, missing: int) -> dict[str, Any]:
    """Ask for the full desired set: a partial frame named replicas this agent has no entry for."""
    return {"type": "desired.request", "generation": generation, "missing": missing}


def heartbeat_frame() -> dict[str, Any]:
    return {"type": "heartbeat"}


# The frame entry last built for each replica, with the status it was built from: a status
# object that comes back unchanged (agent/status.py reuses them) keeps its entry, the same
# dict, so building a frame and comparing it with the last one costs little per replica.
EntryCache = dict[ReplicaKey, tuple[ReplicaStatus, dict[str, Any]]]


def status_frame(
    generation: int, statuses: Sequence[ReplicaStatus], cache: EntryCache | None = None
) -> dict[str, Any]:
    """A full status frame: every replica the agent knows about (`full` is always true in v1)."""
    if cache is None:
        entries = [status_entry(s) for s in statuses]
    else:
        entries, kept = [], {}
        for s in statuses:
            key = (s.namespace, s.name)
            last = cache.get(key)
            entry = last[1] if last is not None and last[0] is s else status_entry(s)
            entries.append(entry)
            kept[key] = (s, entry)
        cache.clear()
        cache.update(kept)
    return {"type": "status", "generation": generation, "full": True, "replicas": entries}


def status_entry(s: ReplicaStatus) -> dict[str, Any]:
    """One replica's entry in a status frame."""
    return {
        "name": s.name,
        "namespace": s.namespace,
        "container_id": s.container_id,
        "phase": str(s.phase),
        "exit_code": s.exit_code,
        "message": s.message,
        "restart_count": s.restart_count,
        "started_at": format_time(s.started_at),
        "finished_at": format_time(s.finished_at),
        "ready": s.ready,
        "ready_since": format_time(s.ready_since),
        "health": str(s.health) if s.health is not None else None,
        "last_exit_code": s.last_exit_code,
    }


def partial_status_frame(frame: dict[str, Any], sent: Mapping[ReplicaKey, dict[str, Any]]) -> dict[str, Any]:
    """A full status frame as a partial one: every replica named, and only the entries that
    differ from `sent` (what the control plane last got of each, on this connection)."""
    entries = frame["replicas"]
    changed = []
    for e in entries:
        before = sent.get((e["namespace"], e["name"]))
        if before is not e and before != e:  # the same entry object: unchanged, nothing to compare
            changed.append(e)
    return {
        "type": "status",
        "generation": frame["generation"],
        "full": False,
        "names": [[e["namespace"], e["name"]] for e in entries],
        "replicas": changed,
    }


@functools.lru_cache(maxsize=16384)
def format_time(timestamp: float | None) -> str | None:
    # Cached: every status frame formats every replica's times again (the same few per
    # replica); at thousands of replicas that was a twentieth of an agent's CPU.
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_frame(text: str | bytes) -> Welcome | DesiredSet | Settings | StreamFrame | UnknownFrame:
    """Parse one server frame. Raises ProtocolError when it is malformed.

    A malformed `desired` frame is rejected as a whole rather than partly applied:
    applying part of a set would remove the replicas that failed to parse.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError("frame is not a JSON object with a string 'type'")
    kind = data["type"]
    if kind == "welcome":
        return _parse_welcome(data)
    if kind == "desired":
        return _parse_desired(data)
    if kind == "settings":
        interval = _heartbeat_interval(data, "settings") if "heartbeat_interval" in data else None
        return Settings(heartbeat_interval=interval)
    if kind in STREAM_FRAME_TYPES:  # logs, exec and leases: agent/stream_protocol.py
        return parse_stream_frame(kind, data)
    return UnknownFrame(kind)


def _parse_welcome(data: dict[str, Any]) -> Welcome:
    node = data.get("node")
    if not isinstance(node, str):
        raise ProtocolError("welcome.node must be a string")
    interval = _heartbeat_interval(data, "welcome")
    features = data.get("features", [])
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise ProtocolError("welcome.features must be a list of strings")
    return Welcome(node=node, heartbeat_interval=float(interval), features=tuple(features))


def _heartbeat_interval(data: dict[str, Any], frame: str) -> float:
    interval = data.get("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)
    if isinstance(interval, bool) or not isinstance(interval, int | float) or not 0 < interval <= 3600:
        raise ProtocolError(f"{frame}.heartbeat_interval must be a number of seconds in (0, 3600]")
    return float(interval)


def _parse_desired(data: dict[str, Any]) -> DesiredSet:
    generation = data.get("generation")
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
        raise ProtocolError("desired.generation must be a non-negative integer")
    items = data.get("replicas")
    if not isinstance(items, list):
        raise ProtocolError("desired.replicas must be a list")
    replicas = tuple(_parse_replica(item, f"desired.replicas[{i}]") for i, item in enumerate(items))
    seen: set[tuple[str, str]] = set()
    for replica in replicas:
        if replica.key in seen:
            raise ProtocolError(f"desired.replicas lists {replica.namespace}/{replica.name} twice")
        seen.add(replica.key)
    partial = data.get("partial", False)
    if not isinstance(partial, bool):
        raise ProtocolError("desired.partial must be true or false")
    if not partial:
        return DesiredSet(generation=generation, replicas=replicas)
    listed = data.get("names")
    if not isinstance(listed, list):
        raise ProtocolError("desired.names must be a list of [namespace, name] pairs in a partial frame")
    names: list[ReplicaKey] = []
    for i, pair in enumerate(listed):
        if not isinstance(pair, list) or len(pair) != 2:
            raise ProtocolError(f"desired.names[{i}] must be a [namespace, name] pair")
        names.append(
            (_dns_label(pair[0], f"desired.names[{i}][0]"), _dns_label(pair[1], f"desired.names[{i}][1]"))
        )
    if len(set(names)) != len(names):
        raise ProtocolError("desired.names lists a replica twice")
    unnamed = seen - set(names)
    if unnamed:
        namespace, name = sorted(unnamed)[0]
        raise ProtocolError(f"desired.replicas carries {namespace}/{name}, which desired.names does not list")
    return DesiredSet(generation=generation, replicas=replicas, names=tuple(names))


def complete_set(
    frame: DesiredSet, known: Callable[[ReplicaKey], DesiredReplica | None]
) -> tuple[list[DesiredReplica], list[ReplicaKey]]:
    """The whole set a partial frame stands for: each named replica's entry, from the frame
    or else `known` (what the agent has). Returns (the set, the names found in neither)."""
    carried = {replica.key: replica for replica in frame.replicas}
    if frame.names is None:
        return list(frame.replicas), []
    replicas, missing = [], []
    for key in frame.names:
        replica = carried.get(key) or known(key)
        if replica is None:
            missing.append(key)
        else:
            replicas.append(replica)
    return replicas, missing


def _parse_replica(item: Any, where: str) -> DesiredReplica:
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    name = _dns_label(item.get("name"), f"{where}.name")
    namespace = _dns_label(item.get("namespace"), f"{where}.namespace")
    deployment = _string(item.get("deployment"), f"{where}.deployment")
    revision = _string(item.get("revision"), f"{where}.revision")
    image = _string(item.get("image"), f"{where}.image")
    if not image:
        raise ProtocolError(f"{where}.image must not be empty")

    command = item.get("command")
    if command is not None:
        if not isinstance(command, list) or not all(isinstance(part, str) for part in command):
            raise ProtocolError(f"{where}.command must be null or a list of strings")
        command = tuple(command)

    env = item.get("env") or {}
    if not isinstance(env, dict):
        raise ProtocolError(f"{where}.env must be an object")
    for key, value in env.items():
        if not _ENV_NAME.match(key) or not isinstance(value, str):
            raise ProtocolError(f"{where}.env[{key!r}] must be a name without '=' and a string value")

    return DesiredReplica(
        name=name,
        namespace=namespace,
        deployment=deployment,
        revision=revision,
        image=image,
        command=command,
        env=tuple(env.items()),
        ports=tuple(_parse_port(p, f"{where}.ports[{i}]") for i, p in enumerate(item.get("ports") or [])),
        resources=_parse_resources(item.get("resources") or {}, f"{where}.resources"),
        restart_policy=_parse_restart_policy(item.get("restart_policy"), f"{where}.restart_policy"),
        termination_grace_seconds=_parse_grace(
            item.get("termination_grace_seconds"), f"{where}.termination_grace_seconds"
        ),
        readiness_probe=_parse_probe(item.get("readiness_probe"), f"{where}.readiness_probe"),
        liveness_probe=_parse_probe(item.get("liveness_probe"), f"{where}.liveness_probe"),
    )


def _parse_restart_policy(value: Any, where: str) -> RestartPolicy:
    if value is None:
        return RestartPolicy.ALWAYS
    try:
        return RestartPolicy(value)
    except ValueError:
        choices = ", ".join(p.value for p in RestartPolicy)
        raise ProtocolError(f"{where} must be one of {choices}, got {value!r}") from None


def _parse_grace(value: Any, where: str) -> int:
    if value is None:
        return DEFAULT_TERMINATION_GRACE
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TERMINATION_GRACE:
        raise ProtocolError(f"{where} must be an integer number of seconds from 0 to {MAX_TERMINATION_GRACE}")
    return value


def _parse_probe(item: Any, where: str) -> Probe | None:
    if item is None:
        return None
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be null or an object")
    present = [name for name in _PROBE_HANDLERS if item.get(name) is not None]
    if len(present) != 1:
        raise ProtocolError(f"{where} must have exactly one of {', '.join(_PROBE_HANDLERS)}")
    numbers = {}
    for field, default, minimum in _PROBE_NUMBERS:
        value = item.get(field)
        if value is None:
            value = default
        elif isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _MAX_INT32:
            raise ProtocolError(f"{where}.{field} must be an integer from {minimum} to {_MAX_INT32}")
        numbers[field] = value
    return Probe(handler=_parse_handler(present[0], item[present[0]], f"{where}.{present[0]}"), **numbers)


def _parse_handler(kind: str, item: Any, where: str) -> Handler:
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    if kind == "exec":
        command = item.get("command")
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(part, str) for part in command)
            or not command[0]
        ):
            raise ProtocolError(f"{where}.command must be a non-empty list of strings")
        return Exec(command=tuple(command))
    port = _port_number(item.get("port"), f"{where}.port")
    if kind == "tcp_socket":
        return TcpSocket(port=port)
    path = item.get("path")
    if path is None:
        path = "/"
    if not isinstance(path, str) or not _HTTP_PATH.match(path):
        raise ProtocolError(f"{where}.path must start with '/' and have no spaces or control characters")
    return HttpGet(port=port, path=path)


def _parse_port(item: Any, where: str) -> PortMapping:
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    container = _port_number(item.get("container"), f"{where}.container")
    host = item.get("host")
    if host is not None:
        host = _port_number(host, f"{where}.host")
    protocol = item.get("protocol") or "tcp"
    if protocol not in ("tcp", "udp", "sctp"):
        raise ProtocolError(f"{where}.protocol must be tcp, udp or sctp")
    return PortMapping(container=container, host=host, protocol=protocol)


def _parse_resources(item: Any, where: str) -> Resources:
    if not isinstance(item, dict):
        raise ProtocolError(f"{where} must be an object")
    values = {}
    for field in ("cpu_millis", "memory_bytes"):
        value = item.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ProtocolError(f"{where}.{field} must be null or a non-negative integer")
        values[field] = value or None  # 0 means no limit, as null does
    return Resources(**values)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{where} must be a string")
    return value


def _dns_label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _DNS_LABEL.match(value):
        raise ProtocolError(f"{where} must be a DNS-1123 label, got {value!r}")
    return value


def _port_number(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ProtocolError(f"{where} must be a port number (1-65535)")
    return value
