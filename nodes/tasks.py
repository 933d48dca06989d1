"""Celery tasks for nodes: thin wrappers that take primary keys or nothing."""

from celery import shared_task

from nodes.controllers.monitor import monitor_nodes as _monitor_nodes


@shared_task(name="nodes.monitor_nodes", ignore_result=True, expires=5)
def monitor_nodes() -> None:
    _monitor_nodes()
