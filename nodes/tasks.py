"""Celery tasks for nodes: thin wrappers that take primary keys or nothing."""

import logging

from celery import shared_task

from nodes import heartbeats
from nodes.controllers.monitor import monitor_nodes as _monitor_nodes
from orchestrator import liveness
from orchestrator.tasks import DATABASE_ERRORS, REDIS_ERRORS

log = logging.getLogger(__name__)


@shared_task(name="nodes.monitor_nodes", ignore_result=True, expires=5)
def monitor_nodes() -> None:
    try:
        _monitor_nodes()
        liveness.monitor_ran(heartbeats._client())
    except (*DATABASE_ERRORS, *REDIS_ERRORS) as exc:
        # PostgreSQL or Redis restarting: no node is judged meanwhile; the next pass (a
        # second or so later) looks again.
        log.warning("node monitor skipped a pass: %s", str(exc).strip().splitlines()[0] if str(exc) else exc)
