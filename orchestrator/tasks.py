"""Celery tasks for the orchestrator: thin, idempotent, keyed by primary key."""

import contextlib
import logging
import time
import uuid
from datetime import timedelta

import redis
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from nodes.models import Node
from orchestrator import events, liveness
from orchestrator.controllers.deployment import AGAIN_NOW, Effects
from orchestrator.controllers.deployment import reconcile_deployment as _reconcile_deployment
from orchestrator.dispatch import dispatch_nodes
from orchestrator.models import Deployment, Replica
from orchestrator.scheduling.snapshot import snapshot_held

log = logging.getLogger(__name__)

# PostgreSQL restarting or unreachable: the task runs again later (a pass is idempotent).
DATABASE_ERRORS = (OperationalError, InterfaceError)
# Redis (broker, channel layer, marks) restarting: the same.
REDIS_ERRORS = (redis.RedisError, BrokerError)


_RETRYING = dict(
    autoretry_for=(*DATABASE_ERRORS, *REDIS_ERRORS),
    retry_backoff=True,
    retry_backoff_max=5,  # a pass is cheap; after an outage, work resumes within seconds
    max_retries=None,
)


@shared_task(name="orchestrator.reconcile_deployment", ignore_result=True, **_RETRYING)
def reconcile_deployment(deployment_id: int) -> None:
    """Move one deployment a step closer to its spec; a vanished deployment is a no-op.
    Used for passes due at a time (a replica becoming available, a toleration running out)."""
    recheck_in = _reconcile_deployment(deployment_id)
    if recheck_in == AGAIN_NOW:
        request_reconcile(deployment_id)
    elif recheck_in is not None:
        reconcile_deployment.apply_async((deployment_id,), countdown=recheck_in + 0.1)


# Requested passes wait in a Redis set; one batch task at a time takes up to BATCH of them.
_PENDING = "berth:reconcile-pending"
# Background passes: asked for by agents' reports (a replica's state moved) and by the
# periodic resync (the safety net). Taken after the others, so that under load new and
# changed deployments are placed before statuses are refreshed and converged ones checked.
_BACKGROUND = "berth:reconcile-observed"  # the key's old name: requests queued before an upgrade stay
# Set while a batch task is queued or running: requests meanwhile only join the sets, and
# the batch queues the next one as it ends. Batches run one at a time, in the scheduler's
# one process (config/settings.py, SCHEDULING_QUEUE), whose snapshot cache then holds all
# it placed (docs/scheduling.md, Concurrency). Two at once are still safe (the optimistic
# commit): the mark expires, so a batch lost with a killed scheduler holds nothing back for
# long, and the resync forces one.
_BATCH_QUEUED = "berth:reconcile-batch-queued"
BATCH_MARK_SECONDS = 60
# Passes others asked for (API, node changes); a batch of them is never topped up with
# background passes, which are taken (in bigger batches: each is cheap) only when none of
# the others waits.
BATCH = 20
BACKGROUND_BATCH = 200
# A batch of background passes checks this often whether others wait, and if so hands its
# rest back and ends: the next batch takes those first. A status pass costs milliseconds,
# and a batch of 200 of them held new deployments back for over a second
# (benchmarks/scheduler_throughput.py --post-threads 8). At least this much background work
# is done per batch, so that a steady stream of new work cannot starve the refreshes.
BACKGROUND_YIELD_SECONDS = 0.1
# While a batch runs, the nodes it placed onto get their desired sets at least this often.
DISPATCH_EVERY_SECONDS = 0.5
_marks = None


def _queued_marks():
    global _marks
    if _marks is None:
        _marks = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _marks


def request_reconcile(deployment_id: int) -> None:
    request_reconciles([deployment_id])


def request_reconciles(deployment_ids, *, force: bool = False, background: bool = False) -> None:
    """Ask for a pass over these deployments. They join a set that the next batch task
    takes: a burst of changes (agent reports, API calls, a resync of every deployment)
    makes one pass per deployment in as few tasks as there are batches, sharing one
    snapshot scan and one desired-set frame per node. A deployment already waiting is
    not added twice. The queued mark expires, so a lost task (its worker was killed)
    holds nothing back for longer than a minute, and the periodic resync asks again.

    Called after a commit: if Redis is down the change is saved all the same, so this logs
    rather than fails the caller; the resync after Redis is back picks the deployment up.
    `force` queues a batch task even if the mark says one is queued (the resync: the task
    may have been lost with a killed worker, its mark left behind). `background`: a refresh
    (what agents observed, the resync), not a change: it waits behind the others.
    """
    ids = sorted(set(deployment_ids))
    if not ids:
        return
    try:
        marks = _queued_marks()
        marks.sadd(_BACKGROUND if background else _PENDING, *ids)
        _queue_batch(marks, force=force)
    except REDIS_ERRORS as exc:
        shown = ", ".join(map(str, ids[:5])) + (" …" if len(ids) > 5 else "")
        log.warning("could not queue a reconcile of deployment %s (%s); the resync will", shown, exc)


# The mark holds the token of the batch task it stands for: a batch ends by deleting the
# mark only if it is still its own. A resync (force) or an expired mark may have handed it
# to another task meanwhile: that one goes on, and this one queues nothing more (else each
# such hand-over would leave one more task going round for as long as work waits).
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_REFRESH = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
)


def _queue_batch(marks, *, force: bool = False) -> None:
    token = uuid.uuid4().hex
    if marks.set(_BATCH_QUEUED, token, nx=not force, ex=BATCH_MARK_SECONDS):
        # Before the task goes out, which a scheduler may start at once: it clears this.
        liveness.batch_queued(marks)  # until a batch starts (the health check's "stalled")
        try:
            reconcile_pending.delay(token)
        except REDIS_ERRORS:
            # No task went out: the mark must not hold back the next request for a minute.
            with contextlib.suppress(*REDIS_ERRORS):
                _release(marks, token)
            raise


def _release(marks, token: str) -> bool:
    """Delete the mark if it is this batch's; True if it was."""
    return bool(marks.eval(_RELEASE, 1, _BATCH_QUEUED, token))


# Nodes handed over by the scheduler's batches, waiting for their desired sets: a Redis set,
# so a node handed over again meanwhile gets one frame. One dispatch task at a time takes
# them (the mark says one is queued or running): the node monitor, on the same worker's two
# slots, never waits behind a pile of them. The mark is renewed as the task goes and expires
# soon after a task is lost (a worker killed); a worker that starts clears it.
_DISPATCH_PENDING = "berth:dispatch-pending"
_DISPATCH_QUEUED = "berth:dispatch-queued"
DISPATCH_MARK_SECONDS = 15
DISPATCH_TAKE = 5000  # nodes per desired_sets() call


@shared_task(name="orchestrator.dispatch_nodes", ignore_result=True, **_RETRYING)
def dispatch_desired_sets() -> None:
    """Send the nodes handed over (_hand_to_worker) their desired sets. The scheduler's
    batches hand them to the worker (the `celery` queue), so placing never waits for
    delivery: reading thousands of nodes' sets and publishing them was an eighth of the
    scheduler's time while deployments waited behind it (benchmarks/scheduler_throughput.py).
    A set is read when this runs, so it is the newest; the node's generation orders sets
    sent from several processes. Nodes whose dispatch failed wait again (the retry takes
    them); any lost otherwise are found by the resync (nodes_to_resend)."""
    marks = _queued_marks()
    while taken := marks.spop(_DISPATCH_PENDING, DISPATCH_TAKE):
        marks.expire(_DISPATCH_QUEUED, DISPATCH_MARK_SECONDS)  # still going
        node_ids = sorted(int(pk) for pk in taken)
        try:
            dispatch_nodes(node_ids)
        except BaseException:
            with contextlib.suppress(*REDIS_ERRORS):
                marks.sadd(_DISPATCH_PENDING, *node_ids)
            raise  # an outage: the retry goes on (the mark holds others back meanwhile)
    # Nodes handed over between the last take and the mark's deletion found the mark set:
    # releasing it queues a task for them.
    _release_dispatch_mark(marks)


def _queue_dispatch(marks) -> None:
    if marks.set(_DISPATCH_QUEUED, 1, nx=True, ex=DISPATCH_MARK_SECONDS):
        try:
            dispatch_desired_sets.delay()
        except REDIS_ERRORS:
            with contextlib.suppress(*REDIS_ERRORS):
                marks.delete(_DISPATCH_QUEUED)  # no task went out: hold nothing back
            raise


def _hand_to_worker(node_ids: list[int]) -> None:
    """Have the worker send these nodes their desired sets (dispatch_desired_sets)."""
    marks = _queued_marks()
    marks.sadd(_DISPATCH_PENDING, *node_ids)
    _queue_dispatch(marks)


def _release_dispatch_mark(marks) -> None:
    """Delete the dispatch mark; queue a dispatch task if nodes wait."""
    marks.delete(_DISPATCH_QUEUED)
    if marks.exists(_DISPATCH_PENDING):
        _queue_dispatch(marks)


def clear_dispatch_mark() -> None:
    """A worker starts: a dispatch task lost with a killed one must not hold the others back
    until its mark expires. Queues one if nodes wait."""
    _release_dispatch_mark(_queued_marks())


@shared_task(name="orchestrator.reconcile_pending", ignore_result=True, **_RETRYING)
def reconcile_pending(token: str | None = None) -> None:
    """Reconcile a batch of the requested deployments, in one snapshot scan, handing each
    touched node to the worker to be sent its desired set (dispatch_desired_sets) once per
    DISPATCH_EVERY_SECONDS rather than per pass.
    More waiting than a batch: the next batch task is queued as this one ends. `token`:
    the mark's, set when this task was queued (see _RELEASE)."""
    marks = _queued_marks()
    liveness.batch_started(marks)
    if token is None:  # queued by a version before tokens (or called directly): it takes the mark
        token = uuid.uuid4().hex
        marks.set(_BATCH_QUEUED, token, ex=BATCH_MARK_SECONDS)
    try:
        _run_batch(marks, token)
    except BaseException:
        # What was not done waits in the sets. A database or Redis outage: the retry takes
        # it (not queued here, so that an outage is not a loop of batches failing at once);
        # anything else: the next request or the periodic resync.
        with contextlib.suppress(*REDIS_ERRORS):
            _release(marks, token)
        raise
    released = _release(marks, token)
    if (released or not marks.exists(_BATCH_QUEUED)) and (marks.scard(_PENDING) or marks.scard(_BACKGROUND)):
        _queue_batch(marks)


def _run_batch(marks, token: str) -> None:
    ids = set(marks.spop(_PENDING, BATCH) or ())
    background = not ids
    if background:
        ids = set(marks.spop(_BACKGROUND, BACKGROUND_BATCH) or ())
    if not ids:
        return
    marks.srem(_BACKGROUND, *ids)  # one pass each, whichever set asked
    taken = sorted(int(pk) for pk in ids)
    effects = Effects(send=_hand_to_worker)
    done = 0
    again: list[int] = []  # passes that stopped at the burst limit: they go on in a next batch
    last_dispatch = last_yield_check = time.monotonic()
    try:
        with snapshot_held():
            for deployment_id in taken:
                if background and done and time.monotonic() - last_yield_check >= BACKGROUND_YIELD_SECONDS:
                    if marks.exists(_PENDING):  # new work waits: it goes first, the rest after
                        marks.sadd(_BACKGROUND, *taken[done:])
                        break
                    last_yield_check = time.monotonic()
                recheck_in = _pass(deployment_id, effects)
                done += 1
                if recheck_in == AGAIN_NOW:
                    again.append(deployment_id)
                elif recheck_in is not None:
                    reconcile_deployment.apply_async((deployment_id,), countdown=recheck_in + 0.1)
                if time.monotonic() - last_dispatch >= DISPATCH_EVERY_SECONDS:
                    effects.flush()
                    marks.eval(_REFRESH, 1, _BATCH_QUEUED, token, BATCH_MARK_SECONDS)  # still running
                    last_dispatch = time.monotonic()
        effects.flush()
        if again:
            marks.sadd(_PENDING, *again)
    except BaseException:
        # Not lost: what was not done goes back to wait (and the retry takes it); what was
        # done is sent if it still can be (else nodes_to_resend finds it within seconds).
        with contextlib.suppress(*REDIS_ERRORS):
            if taken[done:] or again:
                marks.sadd(_PENDING, *taken[done:], *again)
        with contextlib.suppress(*DATABASE_ERRORS, *REDIS_ERRORS):
            effects.flush()
        raise


def _pass(deployment_id: int, effects: Effects) -> float | None:
    """One deployment's pass within a batch. A database or Redis outage ends the batch (it
    is retried); any other error is this deployment's alone (a bug its spec or state runs
    into): it is logged, its transaction rolled back, and the batch goes on with the others.
    The periodic resync passes over it again."""
    try:
        return _reconcile_deployment(deployment_id, effects)
    except (*DATABASE_ERRORS, *REDIS_ERRORS):
        raise
    except Exception:
        log.exception(
            "the pass over deployment %s failed; the batch goes on, the resync (every %g s) tries it again",
            deployment_id, settings.RESYNC_INTERVAL_SECONDS,
        )  # fmt: skip
        return None


def place_waiting_replicas() -> None:
    """Room appeared (a node joined, changed or freed some): every deployment with replicas
    waiting for a node gets another placement pass."""
    waiting = Replica.objects.filter(node__isnull=True, phase=Replica.Phase.PENDING)
    request_reconciles(set(waiting.values_list("deployment_id", flat=True)))


# A desired set may never reach its agent: a worker killed between its commit and its
# dispatch, a publish lost with Redis. What tells:
# - A node whose agent acknowledged its newest generation, yet has not reported a replica
#   placed on it UNDELIVERED_PLACEMENT ago (or still has one being stopped UNDELIVERED_STOP
#   after): the set it applied lacked them (the dispatch never happened).
# - A node whose agent has not acknowledged its newest generation: most often a busy agent
#   or control plane, so only once that lag passes UNDELIVERED_STOP; at once after Redis
#   lost its data (the frames published meanwhile reached nobody).
# Sending a set again costs a frame the agent applies again; resending every lagging node
# at each resync fed the load at 100,000 replicas (each frame carries the node's whole set).
UNDELIVERED_PLACEMENT = timedelta(seconds=5)
UNDELIVERED_STOP = timedelta(seconds=60)


def nodes_to_resend(now=None, *, every_lagging: bool = False) -> list[int]:
    """Ready, connected nodes whose agent may be missing its newest desired set;
    `every_lagging`: also every node that has not acknowledged its newest generation."""
    now = now or timezone.now()
    connected = Node.objects.filter(status=Node.Status.READY, session__isnull=False)
    lagging = set(connected.filter(observed_generation__lt=F("generation")).values_list("pk", flat=True))
    unreported = Replica.objects.filter(node__in=connected).filter(
        Q(phase=Replica.Phase.PENDING, scheduled_at__lt=now - UNDELIVERED_PLACEMENT)
        | Q(phase=Replica.Phase.TERMINATING, updated_at__lt=now - UNDELIVERED_STOP)
    )
    long_unreported = unreported.filter(
        Q(phase=Replica.Phase.TERMINATING) | Q(scheduled_at__lt=now - UNDELIVERED_STOP)
    )
    stale = set(unreported.values_list("node_id", flat=True).distinct()) - lagging
    if every_lagging:
        stale |= lagging
    else:
        stale |= set(long_unreported.filter(node__in=lagging).values_list("node_id", flat=True).distinct())
    return sorted(stale)


@shared_task(name="orchestrator.resync", ignore_result=True, expires=60)
def resync(after_redis_loss: bool = False) -> None:
    """The periodic safety net: reconcile every deployment, and resend the desired set to
    Ready nodes that may not have it (nodes_to_resend). Also run when a worker starts (its
    predecessor may have died holding tasks) and after Redis lost its data (queued tasks
    and published sets went with it: every node behind its generation gets its set)."""
    try:
        # Behind any pass asked for meanwhile: a burst of new deployments is not held up
        # by checking every converged one.
        request_reconciles(Deployment.objects.values_list("pk", flat=True), force=True, background=True)
        stale = nodes_to_resend(every_lagging=after_redis_loss)
        if stale:
            log.info("resending desired sets to %d node(s) that may have missed one", len(stale))
            dispatch_nodes(stale)
    except (*DATABASE_ERRORS, *REDIS_ERRORS) as exc:
        log.warning("resync skipped (the next one runs in %g s): %s", settings.RESYNC_INTERVAL_SECONDS, exc)


@shared_task(name="orchestrator.prune_events", ignore_result=True, expires=60)
def prune_events() -> None:
    """Delete the events older than BERTH_EVENT_TTL_SECONDS (orchestrator.events.prune_events)."""
    try:
        deleted = events.prune_events()
    except DATABASE_ERRORS as exc:
        log.warning(
            "events not pruned (the next try runs in %g s): %s", settings.EVENT_PRUNE_INTERVAL_SECONDS, exc
        )
        return
    if deleted:
        log.info("pruned %d event(s) not seen for %g s", deleted, settings.EVENT_TTL_SECONDS)
