"""Celery tasks for the orchestrator: thin, idempotent, keyed by primary key."""

import logging

from celery import shared_task
from django.db import OperationalError
from django.db.models import F

from nodes.models import Node
from orchestrator.controllers.deployment import reconcile_deployment as _reconcile_deployment
from orchestrator.dispatch import dispatch_nodes
from orchestrator.models import Deployment

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
    _reconcile_deployment(deployment_id)


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
