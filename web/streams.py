"""What the stream consumers decide, apart from their I/O. Pure.

- `ViewerBuffer`: the bounded buffer between what arrives for one viewer (from agents,
  through the channel layer) and what that viewer's WebSocket can take. It never blocks
  the producer: past its capacity it drops lines and leaves a marker with the count in
  their place, so a stalled browser costs a bounded amount of memory and nobody else.
- `LogCursor`: per replica, the newest line time delivered; resuming a stream from that
  time and dropping the lines at or before it gives no gap and no duplicate.
- `parse_since`: the `since` a person or client may give (RFC 3339, or 10s / 5m / 2h ago).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

DROPPED = "dropped"  # the stream field of a marker entry

# An entry for the viewer: [replica, time, stream, text]; a marker: [None, None, "dropped", count].
Entry = list


def marker(count: int) -> Entry:
    return [None, None, DROPPED, count]


def marker_text(count: int) -> str:
    return f"[… {count} lines dropped]"


class ViewerBuffer:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._entries: deque[Entry] = deque()
        self._dropped = 0  # dropped since the last marker went in
        self.total_dropped = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, entries: Iterable[Entry]) -> None:
        for entry in entries:
            if len(self._entries) >= self.capacity:
                self._drop(1)
                continue
            self._flush_marker()
            self._entries.append(entry)

    def add_dropped(self, count: int) -> None:
        """Lines lost before they reached this buffer (the channel layer was full)."""
        if count > 0:
            self._drop(count)

    def _drop(self, count: int) -> None:
        self._dropped += count
        self.total_dropped += count

    def _flush_marker(self) -> None:
        if self._dropped:
            self._entries.append(marker(self._dropped))
            self._dropped = 0

    def drain(self, limit: int) -> list[Entry]:
        """Up to `limit` entries, oldest first; a pending marker comes out once the lines
        before it are out (the marker stands where the lines were lost)."""
        out = []
        while self._entries and len(out) < limit:
            out.append(self._entries.popleft())
        if not self._entries and self._dropped and len(out) < limit:
            out.append(marker(self._dropped))
            self._dropped = 0
        return out

    @property
    def pending(self) -> bool:
        return bool(self._entries) or bool(self._dropped)


class LogCursor:
    """Per replica, the newest line time delivered, and the instant its stream resumed from.

    Docker's fixed-width times sort as strings. They are not always in order: the engine
    timestamps stdout and stderr in two copiers that race to the log file, so a stdout line
    can follow a stderr line written a microsecond after it. A live line is therefore never
    dropped for being older than the newest one; only a line at or before the instant the
    stream was (re)opened from is a repeat.
    """

    def __init__(self, initial: dict[str, str] | None = None) -> None:
        self._newest: dict[str, str] = dict(initial or {})
        self._floor: dict[str, str] = {}

    def get(self, replica: str) -> str | None:
        """Where a stream of this replica opened now resumes from (None: from the start)."""
        return self._newest.get(replica)

    def resume(self, replica: str) -> str | None:
        """A stream of `replica` opens now, from `get(replica)`: its lines up to there repeat."""
        floor = self._newest.get(replica)
        if floor:
            self._floor[replica] = floor
        else:
            self._floor.pop(replica, None)
        return floor

    def fresh(self, replica: str, lines: Iterable[list]) -> list[list]:
        """The lines ([time, stream, text]) past the resume instant; moves the cursor past them."""
        floor = self._floor.get(replica, "")
        newest = self._newest.get(replica, "")
        out = []
        for line in lines:
            time = line[0]
            if time and time <= floor:
                continue  # a resumed stream starts at the floor's instant: seen already
            out.append(line)
            if time > newest:
                newest = time
        if newest:
            self._newest[replica] = newest
        return out


_RELATIVE = re.compile(r"^(\d{1,7})([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
_RFC3339 = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})?$")


class SinceError(ValueError):
    pass


def parse_since(value: str, now: datetime | None = None) -> str:
    """`since` as Docker's fixed-width UTC time (9 fractional digits).

    Accepts an RFC 3339 time (no zone means UTC) or a duration ago: 30s, 5m, 2h, 1d.
    """
    value = (value or "").strip()
    relative = _RELATIVE.match(value)
    if relative:
        now = now or datetime.now(UTC)
        moment = now - timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}000Z"
    match = _RFC3339.match(value)
    if match is None:
        raise SinceError(
            f"{value!r} is not a time: give an RFC 3339 time (2026-01-02T03:04:05Z) "
            "or a duration ago (30s, 5m, 2h)"
        )
    try:
        moment = datetime.fromisoformat(match.group(1).replace(" ", "T") + _zone(match.group(3)))
    except ValueError:
        raise SinceError(f"{value!r} is not a valid date and time") from None
    moment = moment.astimezone(UTC)
    fraction = (match.group(2) or "").ljust(9, "0")
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + fraction + "Z"


def _zone(zone: str | None) -> str:
    return "+00:00" if zone in (None, "Z") else zone
