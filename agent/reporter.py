"""Sends full status frames when the observed state changes, at most one per 50 ms.

The first change after a quiet period is sent at once (a replica turning Running is
what a deploy waits on); changes that follow within 50 ms are folded into one frame,
built when it is sent, so it always carries the newest state (protocol: "debounced
<= 50 ms"); a frame the same as the last one sent on the connection is not sent again.
One exception to "at once": while `hold` says news is due (a container that has just
started, whose first readiness check is under way), the frame waits for it, at most
50 ms after the change, so "running, not ready" and "ready" a moment later go as one
frame: one report and one controller pass fewer, and the readiness arrives sooner than
the next frame would bring it. `wait_sent` lets the reconciler hold a container's stop
until the frame that takes its readiness off has gone out.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any


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
    ) -> None:
        """Send a frame after each change, for as long as the connection lasts.

        Runs once per connection; the session cancels it on disconnect. A change marked
        while disconnected is sent by the next connection's run, and the session marks
        one change on every connect anyway, since the control plane wants a full picture.
        """
        self._senders += 1
        last = None  # the last frame sent on this connection
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
                frame = json.dumps(snapshot(), separators=(",", ":"))
                if frame != last:  # the control plane has this one already: no need to apply it again
                    await send(frame)
                    last = frame
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
