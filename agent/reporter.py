"""Sends status frames when the observed state changes, at most one per 50 ms.

Partial frames (when the control plane's welcome lists `status.partial`): after the first
frame of a connection, which is full, a frame carries only the replicas whose status
changed since the last one sent, and names all the others. A full one goes again when
asked (`want_full`: the control plane sent the whole desired set, e.g. after the node was
NotReady and its replicas' states were set Unknown) and at least every FULL_EVERY seconds
when frames are sent, in case the control plane lost one. A node running 20 replicas
that start one after the other sends 20 entries, not 1 + 2 + ... + 20.

The first change after a quiet period is sent at once (a replica turning Running is
what a deploy waits on); changes that follow within 50 ms are folded into one frame,
built when it is sent, so it always carries the newest state (protocol: "debounced
<= 50 ms"); a frame the same as the last one sent on the connection is not sent again.
One exception to "at once": while `hold` says news is due (a container being created or
started, or one that has just started whose first readiness check is under way), the
frame waits for it, at most 50 ms after the change, so "creating container" and
"running" a moment later, or "running, not ready" and "ready", go as one frame: one
report and one controller pass fewer, and the news arrives sooner than the next frame
would bring it. `wait_sent` lets the reconciler hold a container's stop
until the frame that takes its readiness off has gone out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.protocol import partial_status_frame

FULL_EVERY = 60.0  # seconds: the longest a connection sends only partial status frames


class StatusReporter:
    def __init__(self, min_interval: float = 0.05) -> None:
        self.min_interval = min_interval
        self._dirty = asyncio.Event()
        self._last_sent = float("-inf")
        self._marks = 0  # changes marked so far
        self._sent_marks = 0  # changes included in the last frame sent
        self._sent = asyncio.Event()  # set (and replaced) after each frame sent
        self._senders = 0  # connections currently sending
        # Seconds for which a frame may still wait for news that is due, or None when none
        # is (the agent wires it to the reconciler's awaited first readiness verdicts).
        self.hold: Callable[[], float | None] = lambda: None
        self._full_wanted = False

    def want_full(self) -> None:
        """The next frame is full (cheap; a partial frame would have left out unchanged replicas)."""
        self._full_wanted = True
        self.mark_dirty()

    def mark_dirty(self) -> None:
        """Something a status frame shows has changed (cheap; call it as often as you like)."""
        self._marks += 1
        self._dirty.set()

    async def wait_sent(self, timeout: float = 1.0) -> None:
        """Wait until a frame with every change marked so far has been sent, at most `timeout` s.

        Returns at once when no connection is sending: without a control plane to tell,
        waiting would only delay the stop.
        """
        target = self._marks
        deadline = time.monotonic() + timeout
        while self._senders and self._sent_marks < target:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._sent.wait(), remaining)
            except TimeoutError:
                return

    async def run(
        self,
        send: Callable[[str], Awaitable[None]],
        snapshot: Callable[[], dict[str, Any]],
        ready: Callable[[], bool] = lambda: True,
        partial: bool = False,
    ) -> None:
        """Send a frame after each change, for as long as the connection lasts.

        Runs once per connection; the session cancels it on disconnect. A change marked
        while disconnected is sent by the next connection's run, and the session marks
        one change on every connect anyway, since the control plane wants a full picture.
        `snapshot` gives a full frame; with `partial`, what is sent after the first is partial.
        """
        self._senders += 1
        last: dict[str, Any] | None = None  # the snapshot last sent on this connection
        last_full = False  # and whether it went as a full frame
        full_at = float("-inf")
        try:
            while True:
                await self._dirty.wait()
                if not ready():
                    # Before the first full list of the engine a status would claim there are no
                    # containers, and the control plane would take that as "they are gone".
                    self._dirty.clear()
                    continue
                woke = time.monotonic()
                wait = self._last_sent + self.min_interval - woke
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._wait_for_due_news(woke + self.min_interval)
                self._dirty.clear()
                marks = self._marks
                full = snapshot()
                now = time.monotonic()
                whole = not partial or last is None or self._full_wanted or now - full_at >= FULL_EVERY
                # The control plane has this one already: no need to apply it again (a full
                # frame wanted after partial ones still goes).
                if full != last or (whole and not last_full):
                    if whole:
                        message, full_at, self._full_wanted = full, now, False
                    else:
                        sent = {(e["namespace"], e["name"]): e for e in last["replicas"]}
                        message = partial_status_frame(full, sent)
                    await send(json.dumps(message, separators=(",", ":")))
                    last, last_full = full, whole
                    self._last_sent = time.monotonic()
                self._sent_marks = marks
                self._sent.set()
                self._sent = asyncio.Event()
        finally:
            self._senders -= 1

    async def _wait_for_due_news(self, limit: float) -> None:
        """While `hold` says news is due, wait for the next change (until `limit` at most)."""
        while (due := self.hold()) is not None:
            remaining = min(due, limit - time.monotonic())
            if remaining <= 0:
                return
            self._dirty.clear()  # the frame is built when sent: it carries every change anyway
            try:
                await asyncio.wait_for(self._dirty.wait(), remaining)
            except TimeoutError:
                return
