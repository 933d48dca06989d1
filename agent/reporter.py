"""Sends full status frames when the observed state changes, at most one per 50 ms.

The first change after a quiet period is sent at once (a replica turning Running is
what a deploy waits on); changes that follow within 50 ms are folded into one frame,
built when it is sent, so it always carries the newest state (protocol: "debounced
<= 50 ms").
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

    def mark_dirty(self) -> None:
        """Something a status frame shows has changed (cheap; call it as often as you like)."""
        self._dirty.set()

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
        while True:
            await self._dirty.wait()
            if not ready():
                # Before the first full list of the engine a status would claim there are no
                # containers, and the control plane would take that as "they are gone".
                self._dirty.clear()
                continue
            wait = self._last_sent + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._dirty.clear()
            await send(json.dumps(snapshot(), separators=(",", ":")))
            self._last_sent = time.monotonic()
