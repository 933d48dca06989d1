"""Waiting on a condition with a deadline: the only way tests wait (no bare sleeps)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time; the message says what was last seen."""


def wait_for(
    condition: Callable[[], T],
    timeout: float = 30.0,
    describe: str | Callable[[], str] = "the condition",
    *,
    interval: float = 0.1,
    max_interval: float = 1.0,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call `condition` until it returns something truthy, and return that.

    An exception raised by `condition` counts as "not yet" (a service may still be coming
    up); the last value or exception is reported if the deadline passes. `describe` may be
    a callable, evaluated only on timeout, to add context (e.g. the agent's last log lines).
    Exceptions of the `fatal` types end the wait at once.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_exc: BaseException | None = None
    while True:
        try:
            value = condition()
        except fatal:
            raise
        except Exception as exc:
            last, last_exc = f"raised {exc!r}", exc
        else:
            if value:
                return value
            last, last_exc = value, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            what = describe() if callable(describe) else describe
            message = f"timed out after {timeout:g}s waiting for {what}; last saw: {last!r}"
            raise WaitTimeout(message) from last_exc
        time.sleep(min(interval, remaining))
        interval = min(interval * 1.5, max_interval)
