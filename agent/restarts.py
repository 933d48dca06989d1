"""Per-replica restart history and the back-off schedule (protocol section 3).

A desired replica whose container exited is restarted after 10 s, then 20 s, 40 s, ...
at most 5 min; a run of 10 min or more resets the schedule. Failed actions (a pull that
fails, a start the engine refuses) are retried on the same schedule so a broken replica
never spins the engine. A container restarted in place because its liveness probe failed
(or its HEALTHCHECK says unhealthy) counts as a restart too: the first one happens at once,
repeated ones wait 10 s, 20 s, ... from the previous restart. Pure values and arithmetic:
the planner and the status builder both read them, only the reconciler replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from agent.replicas import ObservedContainer

BASE_DELAY = 10.0
MAX_DELAY = 300.0
RESET_AFTER = 600.0


def backoff_delay(attempt: int) -> float:
    """Delay before the attempt-th retry (0-based): 10 s doubling, capped at 300 s."""
    if attempt >= 5:  # 10 * 2**5 > 300: avoid huge powers for long-failing replicas
        return MAX_DELAY
    return min(BASE_DELAY * 2 ** max(attempt, 0), MAX_DELAY)


@dataclass(frozen=True)
class RestartRecord:
    """What the agent remembers about one replica between plans.

    `restart_count` is reported to the control plane and only grows. `streak` counts
    restarts since the container last ran for `RESET_AFTER`; it drives the delay.
    `failures`/`error`/`failed_at` describe the last failed action, cleared on success.
    `last_exit_code` survives restarts (the engine forgets it when a container starts again);
    `restarted_at` is when the agent last restarted it; `stopped_for` says why the agent
    stopped a container it then left stopped (liveness failure under restart policy never).
    """

    restart_count: int = 0
    streak: int = 0
    failures: int = 0
    error: str | None = None
    failed_at: float | None = None
    last_exit_code: int | None = None
    restarted_at: float | None = None
    stopped_for: str | None = None

    def effective_streak(self, container: ObservedContainer) -> int:
        """The streak, forgotten if the container's last run lasted long enough."""
        started, finished = container.started_at, container.finished_at
        if started is not None and finished is not None and finished - started >= RESET_AFTER:
            return 0
        return self.streak

    def restart_due_at(self, container: ObservedContainer) -> float:
        """When an exited container may be started again, counted from its exit.

        The engine's exit time is used (not when the agent noticed), so an agent restart
        neither shortens nor lengthens the wait. An unknown exit time means "now".
        """
        if container.finished_at is None:
            return 0.0
        return container.finished_at + backoff_delay(self.effective_streak(container))

    def retry_due_at(self) -> float | None:
        """When the last failed action may be retried, or None if nothing failed."""
        if self.error is None or self.failed_at is None:
            return None
        return self.failed_at + backoff_delay(self.failures - 1)

    def unhealthy_restart_due_at(self, running: ObservedContainer, now: float) -> float:
        """When a running container that failed its liveness check may be restarted in place.

        At once the first time; after that 10 s, 20 s, ... from the previous restart. A run
        of RESET_AFTER since the container's last start forgets the streak.
        """
        started = running.started_at
        if self.restarted_at is None or (started is not None and now - started >= RESET_AFTER):
            return 0.0
        if self.streak == 0:
            return 0.0
        return self.restarted_at + backoff_delay(self.streak - 1)

    def after_restart(self, exited: ObservedContainer, now: float | None = None) -> RestartRecord:
        """The record once `exited` (stopped, by itself or by the agent) has been started again."""
        return replace(
            self,
            restart_count=self.restart_count + 1,
            streak=self.effective_streak(exited) + 1,
            failures=0,
            error=None,
            failed_at=None,
            last_exit_code=exited.exit_code,
            restarted_at=now if now is not None else self.restarted_at,
            stopped_for=None,
        )

    def after_stop(self, stopped: ObservedContainer | None, reason: str) -> RestartRecord:
        """The record once the agent stopped a container for `reason` and left it stopped."""
        code = stopped.exit_code if stopped is not None else None
        return replace(self, stopped_for=reason, last_exit_code=code)

    def after_failure(self, error: str, now: float) -> RestartRecord:
        return replace(self, failures=self.failures + 1, error=error, failed_at=now)

    def after_success(self) -> RestartRecord:
        return replace(self, failures=0, error=None, failed_at=None)
