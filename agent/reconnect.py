"""Exponential back-off with full jitter for reconnecting (to the control plane, to the engine).

Full jitter (a uniform delay between 0 and the exponential ceiling) spreads the
reconnections of a whole fleet after a control-plane restart, instead of having every
agent knock at the same instants.
"""

from __future__ import annotations

import random
from collections.abc import Callable


class ReconnectDelay:
    """Delays base, 2*base, 4*base, ... capped at `cap`, each drawn uniformly below its ceiling."""

    def __init__(
        self, base: float = 0.5, cap: float = 30.0, rng: Callable[[], float] = random.random
    ) -> None:
        self.base = base
        self.cap = cap
        self._rng = rng
        self._attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        return min(self.cap, self.base * 2 ** min(self._attempt, 32))

    def next(self) -> float:
        delay = self._rng() * self.ceiling()
        self._attempt += 1
        return delay

    def reset(self) -> None:
        """Called after a healthy session, so the next outage starts with short delays again."""
        self._attempt = 0
