"""Readiness and liveness probes: what to check, and the pure decision over their results.

`Probe` is one probe of a desired replica (protocol section 2: `readiness_probe`,
`liveness_probe`). `ProbeState` is what the agent knows about one probe of one container
run: consecutive successes and failures, whether the probe passes, since when, and when
to check next. `after_result` is the whole state machine (kubelet's thresholds): a probe
passes after `success_threshold` successes in a row and fails after `failure_threshold`
failures in a row. No I/O here: the prober (agent/prober.py) runs the checks and keeps
the states; the planner and the status builder only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum


@dataclass(frozen=True)
class HttpGet:
    """Success: an HTTP status 200..399 from GET `path` on the container's own address."""

    port: int
    path: str = "/"

    def describe(self) -> str:
        return f"HTTP GET :{self.port}{self.path}"


@dataclass(frozen=True)
class TcpSocket:
    """Success: a TCP connection to `port` on the container's own address."""

    port: int

    def describe(self) -> str:
        return f"tcp :{self.port}"


@dataclass(frozen=True)
class Exec:
    """Success: `command` exits 0 when run in the container (docker exec)."""

    command: tuple[str, ...]

    def describe(self) -> str:
        text = " ".join(self.command)
        return f"exec {text if len(text) <= 60 else text[:57] + '...'}"


Handler = HttpGet | TcpSocket | Exec


@dataclass(frozen=True)
class Probe:
    handler: Handler
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    failure_threshold: int = 3
    success_threshold: int = 1


# Before a container's first readiness success, a failed check is retried after this many
# seconds (the first STARTUP_FAST_CHECKS times), then doubling up to the probe's period.
STARTUP_RECHECK = 0.1
STARTUP_FAST_CHECKS = 20


@dataclass(frozen=True)
class ProbeResult:
    """One check: `detail` says what failed ("HTTP GET :8080/: status 503"), empty on success."""

    ok: bool
    detail: str = ""


class ProbeKind(StrEnum):
    READINESS = "readiness"
    LIVENESS = "liveness"


@dataclass(frozen=True)
class ProbeState:
    """One probe of one container run (a restarted container starts over with a new state).

    Readiness starts failing (not ready before the first success); liveness starts passing
    (alive until proven otherwise). `since` is when `passing` last changed (for readiness:
    when the container became ready). `next_at` is when the next check is due, in the
    same clock as `started_at`.
    """

    kind: ProbeKind
    probe: Probe
    started_at: float
    passing: bool
    next_at: float
    since: float | None = None
    successes: int = 0  # consecutive
    failures: int = 0  # consecutive
    checks: int = 0
    detail: str = ""  # the last failure's detail, kept until the next success

    @classmethod
    def initial(cls, kind: ProbeKind, probe: Probe, started_at: float) -> ProbeState:
        """The state of a container run that started at `started_at`: first check after the delay."""
        alive = kind == ProbeKind.LIVENESS
        return cls(
            kind=kind,
            probe=probe,
            started_at=started_at,
            passing=alive,
            since=started_at if alive else None,
            next_at=started_at + probe.initial_delay_seconds,
        )

    def after_result(self, ok: bool, now: float, detail: str = "") -> ProbeState:
        """The state after one check that finished at `now`."""
        probe = self.probe
        if ok:
            successes, failures = self.successes + 1, 0
            passing = self.passing or successes >= probe.success_threshold
            detail = ""
        else:
            successes, failures = 0, self.failures + 1
            passing = self.passing and failures < probe.failure_threshold
        return replace(
            self,
            passing=passing,
            since=now if passing != self.passing else self.since,
            successes=successes,
            failures=failures,
            checks=self.checks + 1,
            detail=detail,
            next_at=self._next_check(passing, failures, now),
        )

    def _next_check(self, passing: bool, failures: int, now: float) -> float:
        if self.kind == ProbeKind.READINESS and not passing and self.since is None:
            # Not ready yet, ever: look again soon (every 0.1 s for 2 s, then doubling up to the
            # period), so a replica that starts fast is ready fast and rollouts do not wait a
            # period per wave.
            backoff = STARTUP_RECHECK * 2 ** min(max(0, failures - STARTUP_FAST_CHECKS), 16)
            return now + min(float(self.probe.period_seconds), backoff)
        # Periods count from when the last check was due, so a slow check does not shift
        # the schedule; a check that overran a whole period runs again at once.
        return max(self.next_at + self.probe.period_seconds, now)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next check (never more than one full wait: clocks jump)."""
        longest = self.probe.initial_delay_seconds + self.probe.period_seconds
        return min(max(0.0, self.next_at - now), float(longest))

    @property
    def failed(self) -> bool:
        """The probe has reached its failure threshold (readiness: not ready; liveness: restart)."""
        return not self.passing and self.failures >= self.probe.failure_threshold

    def failure_message(self) -> str:
        """What a human reads in the replica's status, e.g. "readiness probe failed: tcp :6379: ..."."""
        if self.kind == ProbeKind.LIVENESS:
            times = "1 time" if self.failures == 1 else f"{self.failures} times"
            return f"liveness probe failed {times}: {self.detail}"
        return f"readiness probe failed: {self.detail}"


@dataclass(frozen=True)
class ContainerProbes:
    """What the prober knows about one container run: its probes, and its Docker health since when."""

    container_id: str
    started_at: float | None
    readiness: ProbeState | None = None
    liveness: ProbeState | None = None
    health: str | None = None  # the engine's HEALTHCHECK status last seen
    health_since: float | None = None  # when `health` was first seen with that value
