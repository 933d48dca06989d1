"""The stream frames of the agent session (docs/agent-protocol.md, section 4): logs, exec, leases.

Parses what the control plane asks for into dataclasses, validating every field that ends
up in an engine call, and builds the frames the agent answers with. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.logbatch import LogLine

# Stream ids are chosen by the control plane (uuid4 hex); bounded so a frame cannot grow a map.
_STREAM_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Docker's fixed-width RFC 3339 timestamps, as the agent sends them in `logs` frames.
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")

MAX_TAIL = 100_000
MAX_COLS = 1000
MAX_ROWS = 500
MAX_INPUT_CHARS = 64 * 1024
MAX_LEASE_SECONDS = 300.0

STREAM_FRAME_TYPES = frozenset(
    {"logs.open", "stream.close", "streams.renew", "exec.open", "exec.input", "exec.resize"}
)


class StreamFrameError(ValueError):
    """A stream frame the agent cannot act on; `stream` says which stream, if known."""

    def __init__(self, message: str, stream: str | None = None) -> None:
        super().__init__(message)
        self.stream = stream


@dataclass(frozen=True)
class LogsOpen:
    stream: str
    namespace: str
    replica: str
    since: str | None  # RFC 3339 with up to 9 fractional digits; lines at this instant included
    tail: int | None  # None: all
    follow: bool
    lease: float


@dataclass(frozen=True)
class StreamClose:
    stream: str


@dataclass(frozen=True)
class StreamsRenew:
    streams: tuple[str, ...]
    lease: float


@dataclass(frozen=True)
class ExecOpen:
    stream: str
    namespace: str
    replica: str
    command: tuple[str, ...]
    cols: int
    rows: int
    lease: float


@dataclass(frozen=True)
class ExecInput:
    stream: str
    data: str


@dataclass(frozen=True)
class ExecResize:
    stream: str
    cols: int
    rows: int


StreamFrame = LogsOpen | StreamClose | StreamsRenew | ExecOpen | ExecInput | ExecResize
STREAM_FRAME_CLASSES = (LogsOpen, StreamClose, StreamsRenew, ExecOpen, ExecInput, ExecResize)


def parse_stream_frame(kind: str, data: dict[str, Any]) -> StreamFrame:
    """Parse a stream frame (its type is one of STREAM_FRAME_TYPES). Raises StreamFrameError."""
    if kind == "streams.renew":
        ids = data.get("streams")
        if not isinstance(ids, list) or not all(isinstance(i, str) and _STREAM_ID.match(i) for i in ids):
            raise StreamFrameError("streams.renew.streams must be a list of stream ids")
        return StreamsRenew(streams=tuple(ids), lease=_lease(data))
    stream = data.get("stream")
    if not isinstance(stream, str) or not _STREAM_ID.match(stream):
        raise StreamFrameError(f"{kind}.stream must be a stream id (1-64 of A-Z a-z 0-9 _ . -)")
    try:
        if kind == "stream.close":
            return StreamClose(stream)
        if kind == "logs.open":
            return _logs_open(stream, data)
        if kind == "exec.open":
            return _exec_open(stream, data)
        if kind == "exec.input":
            text = data.get("data")
            if not isinstance(text, str) or len(text) > MAX_INPUT_CHARS:
                raise StreamFrameError(
                    f"exec.input.data must be a string of at most {MAX_INPUT_CHARS} characters"
                )
            return ExecInput(stream, text)
        if kind == "exec.resize":
            cols, rows = _size(data, "exec.resize")
            return ExecResize(stream, cols, rows)
    except StreamFrameError as exc:
        raise StreamFrameError(str(exc), stream) from None
    raise StreamFrameError(f"unknown stream frame type {kind!r}", stream)


def _logs_open(stream: str, data: dict[str, Any]) -> LogsOpen:
    namespace, replica = _target(data, "logs.open")
    since = data.get("since")
    if since is not None and (not isinstance(since, str) or not _TIMESTAMP.match(since)):
        raise StreamFrameError(
            "logs.open.since must be null or an RFC 3339 UTC time like 2026-01-02T03:04:05.123Z"
        )
    tail = data.get("tail")
    if tail is not None and (
        isinstance(tail, bool) or not isinstance(tail, int) or not 0 <= tail <= MAX_TAIL
    ):
        raise StreamFrameError(f"logs.open.tail must be null or an integer in [0, {MAX_TAIL}]")
    follow = data.get("follow", True)
    if not isinstance(follow, bool):
        raise StreamFrameError("logs.open.follow must be a boolean")
    return LogsOpen(stream, namespace, replica, since, tail, follow, _lease(data))


def _exec_open(stream: str, data: dict[str, Any]) -> ExecOpen:
    namespace, replica = _target(data, "exec.open")
    command = data.get("command")
    if (
        not isinstance(command, list)
        or not command
        or not all(isinstance(part, str) and part and "\x00" not in part for part in command)
    ):
        raise StreamFrameError("exec.open.command must be a non-empty list of non-empty strings")
    cols, rows = _size(data, "exec.open")
    return ExecOpen(stream, namespace, replica, tuple(command), cols, rows, _lease(data))


def _target(data: dict[str, Any], where: str) -> tuple[str, str]:
    namespace, replica = data.get("namespace"), data.get("replica")
    for field, value in (("namespace", namespace), ("replica", replica)):
        if not isinstance(value, str) or not _DNS_LABEL.match(value):
            raise StreamFrameError(f"{where}.{field} must be a DNS-1123 label, got {value!r}")
    return namespace, replica


def _size(data: dict[str, Any], where: str) -> tuple[int, int]:
    cols, rows = data.get("cols"), data.get("rows")
    for field, value, top in (("cols", cols, MAX_COLS), ("rows", rows, MAX_ROWS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise StreamFrameError(f"{where}.{field} must be an integer in [1, {top}]")
    return cols, rows


def _lease(data: dict[str, Any]) -> float:
    lease = data.get("lease", 30)
    if isinstance(lease, bool) or not isinstance(lease, int | float) or not 0 < lease <= MAX_LEASE_SECONDS:
        raise StreamFrameError(f"lease must be a number of seconds in (0, {MAX_LEASE_SECONDS:.0f}]")
    return float(lease)


# -- frames the agent sends -------------------------------------------------------------------


def logs_frame(stream: str, lines: Sequence[LogLine]) -> dict[str, Any]:
    return {
        "type": "logs",
        "stream": stream,
        "lines": [[line.time, line.stream, line.text] for line in lines],
    }


def stream_end_frame(stream: str, error: str | None = None, exit_code: int | None = None) -> dict[str, Any]:
    return {"type": "stream.end", "stream": stream, "error": error, "exit_code": exit_code}


def exec_started_frame(stream: str) -> dict[str, Any]:
    return {"type": "exec.started", "stream": stream}


def exec_output_frame(stream: str, text: str) -> dict[str, Any]:
    return {"type": "exec.output", "stream": stream, "data": text}


def stream_error_frame(stream: str | None, message: str) -> dict[str, Any]:
    """Answer to a stream frame the agent could not parse: the session carries on."""
    return {"type": "stream.error", "stream": stream, "error": message}
