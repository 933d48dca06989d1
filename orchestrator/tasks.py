"""Celery tasks for the orchestrator: thin, idempotent, keyed by primary key."""

import logging

from celery import shared_task
from django.db import OperationalError
from django.db.models import F

from nodes.models import Node
from orchestrator.controllers.deployment import reconcile_deployment as _reconcile_deployment
from orchestrator.dispatch import dispatch_nodes
from orchestrator.models import Deployment, Replica

log = logging.getLogger(__name__)


@shared_task(
    name="orchestrator.reconcile_deployment",
    ignore_result=True,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
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
        import redis
        from django.conf import settings

        _marks = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _marks


def request_reconcile(deployment_id: int) -> None:
    """Queue a reconcile of this deployment unless one is already queued and not started:
    a burst of agent reports about one deployment makes one pass, not hundreds. The mark
    expires, so a lost task never blocks the deployment for longer than a minute (and the
    periodic resync reconciles everything anyway)."""
    if _queued_marks().set(_QUEUED.format(deployment_id), 1, nx=True, ex=60):
        reconcile_deployment.delay(deployment_id)


def place_waiting_replicas() -> None:
    """Room appeared (a node joined, changed or freed some): every deployment with replicas
    waiting for a node gets another placement pass."""
    waiting = Replica.objects.filter(node__isnull=True, phase=Replica.Phase.PENDING)
    for deployment_id in set(waiting.values_list("deployment_id", flat=True)):
        request_reconcile(deployment_id)


@shared_task(name="orchestrator.resync", ignore_result=True, expires=60)
def resync() -> None:
    """The periodic safety net: reconcile every deployment, and resend the desired set to
    Ready nodes that have not confirmed the newest one (a lost message)."""
    for deployment_id in Deployment.objects.values_list("pk", flat=True):
        reconcile_deployment.delay(deployment_id)
    behind = Node.objects.filter(
        status=Node.Status.READY, session__isnull=False, observed_generation__lt=F("generation")
    )
    stale = list(behind.values_list("pk", flat=True))
    if stale:
        log.info("resending desired sets to %d node(s) behind their generation", len(stale))
        dispatch_nodes(stale)
