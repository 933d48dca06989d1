"""How a rollout is going, as a pure function: the Progressing condition and when it failed.

`assess` reads counts the deployment controller gathered and the last progress it
recorded, and says what the Progressing condition is, whether the rollout has failed
(no progress within `progress_deadline_seconds`, or new replicas crash-looping), and when
the controller must look again if nothing else happens first.
"""

from dataclasses import dataclass
from datetime import datetime

# A new replica restarted this many times without becoming ready is crash-looping.
CRASH_LOOP_RESTARTS = 3


@dataclass(frozen=True)
class RolloutCounts:
    desired: int
    revision: int  # the deployment's current revision number
    current: int  # active replicas of the current revision (off draining nodes)
    current_available: int
    old: int  # active replicas of older revisions, or on draining nodes
    unplaced: int
    unplaced_reason: str = ""
    crash_looping: str = ""  # "<replica>: <message>" of a new replica that keeps crashing


@dataclass(frozen=True)
class Assessment:
    status: bool | None  # the Progressing condition: True, False, None (Unknown: paused)
    reason: str
    message: str
    mark: str  # what progress looks like now; a change of it is progress
    progress_at: datetime
    failed: bool = False
    recheck_in: float | None = None


def assess(
    counts: RolloutCounts,
    *,
    paused: bool,
    deadline_seconds: int,
    last_mark: str,
    last_progress_at: datetime | None,
    now: datetime,
) -> Assessment:
    mark = f"{counts.revision}:{counts.current}:{counts.current_available}:{counts.old}"
    progress_at = now if (mark != last_mark or last_progress_at is None) else last_progress_at
    complete = (
        counts.old == 0 and counts.current == counts.desired and counts.current_available == counts.desired
    )
    if complete:
        return Assessment(
            True, "NewReplicasAvailable", "all replicas run the current revision", mark, progress_at
        )
    if paused:
        return Assessment(None, "DeploymentPaused", "the rollout is paused", mark, progress_at)
    updating = (
        f"{counts.current_available} of {counts.desired} replica(s) of revision {counts.revision} available"
    )
    if counts.old:
        updating += f", {counts.old} old one(s) left"
    if counts.crash_looping:
        message = f"new replicas keep crashing ({counts.crash_looping})"
        return Assessment(False, "ReplicaCrashLooping", message, mark, progress_at, failed=True)
    waited = (now - progress_at).total_seconds()
    if waited >= deadline_seconds:
        message = f"no progress for {deadline_seconds} s: {updating}"
        if counts.unplaced:
            message += f"; {counts.unplaced} waiting: {counts.unplaced_reason}"
        return Assessment(False, "ProgressDeadlineExceeded", message, mark, progress_at, failed=True)
    recheck_in = deadline_seconds - waited
    if counts.unplaced:
        message = f"{counts.unplaced} replica(s) waiting: {counts.unplaced_reason}"
        return Assessment(True, "ReplicasPending", message, mark, progress_at, recheck_in=recheck_in)
    return Assessment(True, "ReplicasUpdating", updating, mark, progress_at, recheck_in=recheck_in)
