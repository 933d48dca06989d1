"""The node credential on disk: STATE_DIR/credential.json, mode 0600.

The file holds {"server", "node", "credential"}. It is written atomically (a temporary
file created 0600, fsynced, renamed over the old one) so a crash never leaves a
half-written or world-readable credential behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

CREDENTIAL_FILE = "credential.json"


class CredentialFileError(Exception):
    """credential.json exists but cannot be used; the message says which file and why."""


@dataclass(frozen=True)
class Credential:
    server: str
    node: str
    credential: str = field(repr=False)  # a secret: never printed or logged

    def matches(self, server: str, node: str) -> bool:
        return self.server == server and self.node == node


def credential_path(state_dir: Path) -> Path:
    return Path(state_dir) / CREDENTIAL_FILE


def load_credential(state_dir: Path) -> Credential | None:
    """The stored credential, or None if the node has not enrolled yet."""
    path = credential_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialFileError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) and data.get(k) for k in ("server", "node", "credential")
    ):
        raise CredentialFileError(f"{path} must hold non-empty strings 'server', 'node' and 'credential'")
    return Credential(server=data["server"], node=data["node"], credential=data["credential"])


def save_credential(state_dir: Path, credential: Credential) -> Path:
    """Write the credential atomically with mode 0600; returns the file's path."""
    directory = Path(state_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = credential_path(directory)
    tmp = directory / f".{CREDENTIAL_FILE}.{os.getpid()}.tmp"
    payload = json.dumps(
        {"server": credential.server, "node": credential.node, "credential": credential.credential}
    ).encode()
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)
    return path
