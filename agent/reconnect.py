"""Exponential back-off with full jitter for reconnecting (to the control plane, to the engine).

Full jitter (a uniform delay between 0 and the exponential ceiling) spreads the
reconnections of a whole fleet after a control-plane restart, instead of having every
agent knock at the same instants.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

# After a session the server welcomed ends, the next attempts stay within this ceiling for
# this long: the control plane restarting (a deploy, a crash) is back within seconds, up to
# half a minute on a slow or busy machine. The node monitor holds its judgement while no web
# process runs, then gives a node not heard since 30 s on top of its grace
# (nodes/heartbeats.py): an agent that had drawn long waits meanwhile would come back late
# for nothing. A refused connection costs the server little; past the window, the usual
# back-off.
FAST_CEILING_SECONDS = 1.0
FAST_WINDOW_SECONDS = 60.0


class ReconnectDelay:
    """Delays base, 2*base, 4*base, ... capped at `cap`, each drawn uniformly below its ceiling;
    within FAST_WINDOW_SECONDS of a reset or hurry (a welcomed session just ended), at most
    FAST_CEILING_SECONDS."""

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._clock = clock
        self._attempt = 0
        self._fast_until = float("-inf")

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        ceiling = min(self.cap, self.base * 2 ** min(self._attempt, 32))
        if self._clock() < self._fast_until:
            ceiling = min(ceiling, FAST_CEILING_SECONDS)
        return ceiling

    def next(self) -> float:
        delay = self._rng() * self.ceiling()
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Called after a healthy session, so the next outage starts with short delays again."""
        self._attempt = 0
        self.hurry()

    def hurry(self) -> None:
        """The server was up a moment ago (it welcomed us): keep the next delays short for a
        while, without forgetting how many attempts failed before."""
        self._fast_until = self._clock() + FAST_WINDOW_SECONDS
