"""Log lines from the engine to the session: decoding, hand-over between threads, batching.

Docker's log endpoint (non-TTY containers) multiplexes stdout and stderr in frames with an
8-byte header; with `timestamps=1` each entry starts with a fixed-width RFC 3339 time.
The timestamp is the cursor of a log stream: resuming with `since=<last time seen>` and
dropping lines at exactly that time gives no gap and no duplicate.

`LineHandoff` carries lines from the engine's reader thread to the asyncio loop. It wakes
the loop only when it goes from empty to non-empty, so a fast writer costs one wake-up per
batch, not per line; when it is full the reader thread waits, and Docker (which keeps the
log file) waits with it: nothing is lost on the agent, the session's pace rules.
"""

from __future__ import annotations

import calendar
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

STDOUT, STDERR = "stdout", "stderr"
_STREAMS = {0: STDOUT, 1: STDOUT, 2: STDERR}
HEADER = struct.Struct(">BxxxL")
_TIME = re.compile(rb"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z ?")

BATCH_LINES = 256  # the most lines one `logs` frame carries
HANDOFF_LINES = 10_000  # lines waiting for the session before the reader thread waits


@dataclass(frozen=True, slots=True)
class LogLine:
    time: str  # 2026-11-22T11:00:00.123456789Z (always 9 fractional digits)
    stream: str  # stdout or stderr
    text: str  # without the trailing newline


def split_entries(stream_type: int, payload: bytes) -> Iterator[LogLine]:
    """The log entries in one multiplexed frame's payload (usually one)."""
    stream = _STREAMS.get(stream_type, STDOUT)
    for piece in payload.split(b"\n"):
        if not piece:
            continue
        match = _TIME.match(piece)
        if match is None:
            yield LogLine("", stream, piece.decode("utf-8", "replace"))
            continue
        fraction = (match.group(2) or b"").ljust(9, b"0").decode()
        yield LogLine(
            f"{match.group(1).decode()}.{fraction}Z", stream, piece[match.end() :].decode("utf-8", "replace")
        )


class ChunkedDecoder:
    """HTTP/1.1 chunked transfer encoding, fed raw socket bytes; returns the body bytes.

    The engine sends every log entry as its own HTTP chunk, so reading through http.client
    costs a call per line; decoding whole socket reads here costs a call per read."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._left = 0  # bytes of the current chunk's data still to come
        self._state = "size"
        self.done = False

    def feed(self, data: bytes) -> bytes:
        buffer = self._buffer
        buffer += data
        out = bytearray()
        position, size = 0, len(buffer)
        while not self.done:
            if self._state == "size":
                end = buffer.find(b"\r\n", position)
                if end < 0:
                    break
                length = int(bytes(buffer[position:end]).split(b";", 1)[0].strip() or b"0", 16)
                position = end + 2
                if length == 0:
                    self.done = True
                    break
                self._left, self._state = length, "data"
            elif self._state == "data":
                if position >= size:
                    break
                take = min(self._left, size - position)
                out += buffer[position : position + take]
                position += take
                self._left -= take
                if not self._left:
                    self._state = "crlf"
            else:
                if size - position < 2:
                    break
                position += 2
                self._state = "size"
        del buffer[:position]
        return bytes(out)


class FrameDecoder:
    """Multiplexed frames fed in arbitrary pieces (what one socket read returns) to log lines.

    Reading whole pieces rather than a header and then a payload per line is what lets one
    stream carry tens of thousands of lines a second."""

    def __init__(self, tty: bool = False) -> None:
        self._tty = tty
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[LogLine]:
        if self._tty:  # one raw stream: whole lines only, the rest waits for the next piece
            self._buffer += data
            end = self._buffer.rfind(b"\n")
            if end < 0:
                return []
            payload = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            return list(split_entries(1, payload))
        self._buffer += data
        lines: list[LogLine] = []
        view, offset, size = self._buffer, 0, len(self._buffer)
        while size - offset >= HEADER.size:
            stream_type, length = HEADER.unpack_from(view, offset)
            if size - offset - HEADER.size < length:
                break
            start = offset + HEADER.size
            lines.extend(split_entries(stream_type, bytes(view[start : start + length])))
            offset = start + length
        del self._buffer[:offset]
        return lines

    def flush(self) -> list[LogLine]:
        """What is left when the stream ends (a TTY's last line without a newline)."""
        rest, self._buffer = bytes(self._buffer), bytearray()
        return list(split_entries(1, rest)) if self._tty and rest else []


def read_frames(read: Callable[[int], bytes]) -> Iterator[tuple[int, bytes]]:
    """(stream type, payload) of each multiplexed frame, until the stream ends."""
    while True:
        header = _read_exactly(read, HEADER.size)
        if len(header) < HEADER.size:
            return
        stream_type, length = HEADER.unpack(header)
        if not length:
            continue
        payload = _read_exactly(read, length)
        if not payload:
            return
        yield stream_type, payload


def _read_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    chunks, missing = [], size
    while missing:
        chunk = read(missing)
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def engine_since(timestamp: str) -> str:
    """An RFC 3339 UTC time as the engine's `since` parameter (seconds.nanoseconds, exact)."""
    match = _TIME.match(timestamp.encode())
    if match is None:
        raise ValueError(f"not an RFC 3339 UTC time: {timestamp!r}")
    head = match.group(1).decode()
    seconds = calendar.timegm(
        (
            int(head[0:4]),
            int(head[5:7]),
            int(head[8:10]),
            int(head[11:13]),
            int(head[14:16]),
            int(head[17:19]),
        )
    )
    fraction = (match.group(2) or b"").ljust(9, b"0").decode()
    return f"{seconds}.{fraction}"


class LineHandoff:
    """A bounded, thread-safe line queue between one producer thread and the event loop.

    `put` (producer thread) blocks while the queue is full and returns False once closed;
    `wake` (called with no arguments, must be thread-safe, e.g. via call_soon_threadsafe) is
    called when the queue goes from empty to non-empty or gets closed. `take` (loop) returns
    up to `limit` lines without waiting.
    """

    def __init__(self, wake: Callable[[], None], capacity: int = HANDOFF_LINES) -> None:
        self._wake = wake
        self._capacity = capacity
        self._lines: deque[LogLine] = deque()
        self._cond = threading.Condition()
        self.closed = False
        self.finished = False  # the producer is done (the stream ended)
        self.error: str | None = None

    def put_many(self, lines: list[LogLine]) -> bool:
        """Put lines in order (waiting for room as needed); False once closed."""
        index = 0
        while index < len(lines):
            with self._cond:
                while len(self._lines) >= self._capacity and not self.closed:
                    self._cond.wait()
                if self.closed:
                    return False
                was_empty = not self._lines
                room = self._capacity - len(self._lines)
                self._lines.extend(lines[index : index + room])
                index += room
            if was_empty:
                self._wake()
        return True

    def put(self, line: LogLine) -> bool:
        with self._cond:
            while len(self._lines) >= self._capacity and not self.closed:
                self._cond.wait()
            if self.closed:
                return False
            was_empty = not self._lines
            self._lines.append(line)
        if was_empty:
            self._wake()
        return True

    def finish(self, error: str | None = None) -> None:
        """The producer has no more lines (the container stopped, or the engine failed)."""
        with self._cond:
            self.finished = True
            self.error = error
        self._wake()

    def take(self, limit: int = BATCH_LINES) -> list[LogLine]:
        with self._cond:
            count = min(limit, len(self._lines))
            batch = [self._lines.popleft() for _ in range(count)]
            if count:
                self._cond.notify_all()
            return batch

    def __len__(self) -> int:
        with self._cond:
            return len(self._lines)

    def close(self) -> None:
        """The consumer is gone: the producer's next put returns False."""
        with self._cond:
            self.closed = True
            self._lines.clear()
            self._cond.notify_all()
