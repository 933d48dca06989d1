"""Celery tasks for the orchestrator: thin, idempotent, keyed by primary key."""

import logging
from datetime import timedelta

import redis
from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError as BrokerError

from nodes.models import Node
from orchestrator.controllers.deployment import reconcile_deployment as _reconcile_deployment
from orchestrator.dispatch import dispatch_nodes
from orchestrator.models import Deployment, Replica

log = logging.getLogger(__name__)

# PostgreSQL restarting or unreachable: the task runs again later (a pass is idempotent).
DATABASE_ERRORS = (OperationalError, InterfaceError)
# Redis (broker, channel layer, marks) restarting: the same.
REDIS_ERRORS = (redis.RedisError, BrokerError)


@shared_task(
    name="orchestrator.reconcile_deployment",
    ignore_result=True,
    autoretry_for=(*DATABASE_ERRORS, *REDIS_ERRORS),
    retry_backoff=True,
    retry_backoff_max=5,  # a pass is cheap; after an outage, work resumes within seconds
    max_retries=None,
)
def reconcile_deployment(deployment_id: int) -> None:
    """Move one deployment a step closer to its spec; a vanished deployment is a no-op."""
    # Cleared before reading any state: a change from now on queues another pass.
    _queued_marks().delete(_QUEUED.format(deployment_id))
    recheck_in = _reconcile_deployment(deployment_id)
    if recheck_in is not None:
        reconcile_deployment.apply_async((deployment_id,), countdown=recheck_in + 0.1)


_QUEUED = "berth:reconcile-queued:{}"
_marks = None


def _queued_marks():
    global _marks
    if _marks is None:
        _marks = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _marks


def request_reconcile(deployment_id: int) -> None:
    """Queue a reconcile of this deployment unless one is already queued and not started:
    a burst of agent reports about one deployment makes one pass, not hundreds. The mark
    expires, so a lost task (its worker was killed) never blocks the deployment for longer
    than a minute, and the periodic resync reconciles everything anyway.

    Called after a commit: if Redis is down the change is saved all the same, so this logs
    rather than fails the caller; the resync after Redis is back picks the deployment up.
    """
    try:
        if _queued_marks().set(_QUEUED.format(deployment_id), 1, nx=True, ex=60):
            reconcile_deployment.delay(deployment_id)
    except REDIS_ERRORS as exc:
        log.warning("could not queue a reconcile of deployment %s (%s); the resync will", deployment_id, exc)


def place_waiting_replicas() -> None:
    """Room appeared (a node joined, changed or freed some): every deployment with replicas
    waiting for a node gets another placement pass."""
    waiting = Replica.objects.filter(node__isnull=True, phase=Replica.Phase.PENDING)
    for deployment_id in set(waiting.values_list("deployment_id", flat=True)):
        request_reconcile(deployment_id)


# A replica placed on a connected node that its agent has not reported this long after, or
# one being stopped that is still there this long after, hints at a desired set that never
# reached the agent (a worker killed between its commit and its dispatch, a publish lost
# with Redis). Sending the set again costs one frame; the agent ignores what it has applied.
UNDELIVERED_PLACEMENT = timedelta(seconds=5)
UNDELIVERED_STOP = timedelta(seconds=60)


def nodes_to_resend(now=None) -> list[int]:
    """Ready, connected nodes whose agent may be missing its newest desired set."""
    now = now or timezone.now()
    connected = Node.objects.filter(status=Node.Status.READY, session__isnull=False)
    behind = set(connected.filter(observed_generation__lt=F("generation")).values_list("pk", flat=True))
    unacknowledged = Replica.objects.filter(node__in=connected).filter(
        Q(phase=Replica.Phase.PENDING, scheduled_at__lt=now - UNDELIVERED_PLACEMENT)
        | Q(phase=Replica.Phase.TERMINATING, updated_at__lt=now - UNDELIVERED_STOP)
    )
    return sorted(behind | set(unacknowledged.values_list("node_id", flat=True).distinct()))


@shared_task(name="orchestrator.resync", ignore_result=True, expires=60)
def resync() -> None:
    """The periodic safety net: reconcile every deployment, and resend the desired set to
    Ready nodes that may not have it (behind their generation, or not reporting replicas
    placed on them). Also run when a worker starts (its predecessor may have died holding
    tasks) and after Redis lost its data (queued tasks and published sets went with it)."""
    try:
        for deployment_id in Deployment.objects.values_list("pk", flat=True):
            reconcile_deployment.delay(deployment_id)
        stale = nodes_to_resend()
        if stale:
            log.info("resending desired sets to %d node(s) that may have missed one", len(stale))
            dispatch_nodes(stale)
    except (*DATABASE_ERRORS, *REDIS_ERRORS) as exc:
        log.warning("resync skipped (the next one runs in %g s): %s", settings.RESYNC_INTERVAL_SECONDS, exc)
