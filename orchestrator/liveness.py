"""Whether the background processes are doing their work, for GET /api/v1/health and the
overview: the scheduler (placement passes) and the node monitor each run elsewhere, and
when one is down nothing else says so. Replicas would stay Pending with no reason, or a
dead server's node would stay Ready.

- The scheduler. A batch task that was queued and has not started for SCHEDULER_STALL_SECONDS
  means no scheduler is taking its queue, or it is far behind. The time is kept in Redis
  when the batch is queued and cleared when a batch starts. An idle scheduler queues
  nothing, so it is never taken for a stalled one.
- The node monitor records when each of its passes ended. One whose last pass is older
  than monitor_stall_seconds() (or that never ran since Redis was empty) is not running:
  the worker or beat is down.

`judge` decides from what was read. It is pure, so it is tested by tables.
"""

from __future__ import annotations

import time

from django.conf import settings

BATCH_QUEUED_AT = "berth:scheduler:batch-queued-at"
MONITOR_RAN_AT = "berth:node-monitor:ran-at"
SCHEDULER_STALL_SECONDS = 60.0


def monitor_stall_seconds() -> float:
    """How long without a node monitor pass means it is not running: a few of its intervals,
    and never less than the grace (a pass that takes a while is not a stopped monitor)."""
    return max(5 * settings.NODE_MONITOR_INTERVAL_SECONDS, settings.NODE_GRACE_SECONDS, 10.0)


def batch_queued(redis_client, now: float | None = None) -> None:
    """A batch task was queued: the oldest such time stands until a batch starts."""
    redis_client.set(BATCH_QUEUED_AT, repr(now or time.time()), nx=True)


def batch_started(redis_client) -> None:
    redis_client.delete(BATCH_QUEUED_AT)


def monitor_ran(redis_client, now: float | None = None) -> None:
    redis_client.set(MONITOR_RAN_AT, repr(now or time.time()))


def read(redis_client) -> dict:
    """What `judge` needs, from Redis: one round trip."""
    from orchestrator.tasks import _BACKGROUND, _PENDING

    pipe = redis_client.pipeline(transaction=False)
    pipe.get(BATCH_QUEUED_AT)
    pipe.get(MONITOR_RAN_AT)
    pipe.scard(_PENDING)
    pipe.scard(_BACKGROUND)
    queued_at, ran_at, pending, background = pipe.execute()
    return {
        "batch_queued_at": float(queued_at) if queued_at else None,
        "monitor_ran_at": float(ran_at) if ran_at else None,
        "waiting_passes": int(pending) + int(background),
    }


def judge(
    now: float,
    *,
    batch_queued_at: float | None,
    monitor_ran_at: float | None,
    waiting_passes: int,
    scheduler_stall: float = SCHEDULER_STALL_SECONDS,
    monitor_stall: float,
) -> dict:
    """Each process's status ("ok" or "stalled") and, when stalled, what to do about it."""
    scheduler: dict = {"status": "ok", "waiting_passes": waiting_passes}
    if batch_queued_at is not None and now - batch_queued_at > scheduler_stall:
        waited = now - batch_queued_at
        scheduler.update(
            status="stalled",
            message=f"no placement batch has started for {waited:.0f} s since one was queued "
            f"({waiting_passes} pass(es) waiting): check that the scheduler runs "
            "(celery -A config worker -Q scheduling) and that Redis reaches it",
        )
    monitor: dict = {"status": "ok"}
    if monitor_ran_at is None:
        monitor.update(
            status="stalled",
            message="the node monitor has not run since Redis started: check that the worker "
            "(celery -A config worker -Q celery) and beat (celery -A config beat) run",
        )
    elif now - monitor_ran_at > monitor_stall:
        monitor.update(
            status="stalled",
            message=f"the node monitor last ran {now - monitor_ran_at:.0f} s ago, so no node "
            "is marked NotReady meanwhile: check that the worker "
            "(celery -A config worker -Q celery) and beat (celery -A config beat) run",
        )
    if monitor_ran_at is not None:
        monitor["last_run_s_ago"] = round(now - monitor_ran_at, 1)
    return {"scheduler": scheduler, "node_monitor": monitor}
