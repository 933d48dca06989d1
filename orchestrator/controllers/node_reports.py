"""Applying what an agent reports about the containers it runs.

Reads: the node's replicas. Writes: their observed fields (phase, container, exit code,
restarts, times); deletes Terminating replicas whose container the agent no longer has;
the node's observed generation. Safe to rerun: a report is a full snapshot, applying
it twice leaves the same rows.
"""

import logging
from datetime import datetime

from django.db import transaction
from django.db.models import F
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nodes.models import Node
from orchestrator.broadcast import notify_deployments
from orchestrator.models import Replica

log = logging.getLogger(__name__)

_OBSERVED = (
    "phase",
    "container_id",
    "exit_code",
    "last_exit_code",
    "message",
    "restart_count",
    "started_at",
    "finished_at",
    "ready",
    "ready_since",
    "health",
)
_HEALTH = ("starting", "healthy", "unhealthy")


def _time(value) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None


def _observed_fields(entry: dict) -> dict | None:
    """The report entry as model fields, or None when it is malformed."""
    phase = entry.get("phase")
    if phase not in Replica.REPORTABLE:
        return None
    exit_code = entry.get("exit_code")
    last_exit_code = entry.get("last_exit_code", exit_code)
    restarts = entry.get("restart_count") or 0
    started_at = _time(entry.get("started_at"))
    # Agents before readiness probes existed send no `ready`: running meant ready.
    ready = entry.get("ready", phase == Replica.Phase.RUNNING) is True and phase == Replica.Phase.RUNNING
    ready_since = (_time(entry.get("ready_since")) or started_at) if ready else None
    health = entry.get("health")
    return {
        "phase": phase,
        "container_id": str(entry.get("container_id") or "")[:80],
        "exit_code": exit_code if isinstance(exit_code, int) else None,
        "last_exit_code": last_exit_code if isinstance(last_exit_code, int) else None,
        "message": str(entry.get("message") or "")[:2000],
        "restart_count": restarts if isinstance(restarts, int) and restarts >= 0 else 0,
        "started_at": started_at,
        "finished_at": _time(entry.get("finished_at")),
        "ready": ready,
        "ready_since": ready_since,
        "health": health if health in _HEALTH else "",
    }


def apply_node_report(node_id: int, report: dict) -> None:
    entries = report.get("replicas")
    if not isinstance(entries, list):
        log.warning("node %s sent a status without a replica list; ignored", node_id)
        return
    reported: dict[tuple[str, str], dict] = {}
    for entry in entries:
        if isinstance(entry, dict):
            fields = _observed_fields(entry)
            if fields is not None:
                reported[(str(entry.get("namespace")), str(entry.get("name")))] = fields
    affected: set[int] = set()
    now = timezone.now()
    with transaction.atomic():
        replicas = (
            Replica.objects.select_for_update(of=("self",))
            .filter(node_id=node_id)
            .select_related("namespace")
            .order_by("pk")  # the controller locks replicas in pk order too: no deadlock
        )
        gone, updated, fields = [], [], set()
        for replica in replicas:
            observed = reported.get((replica.namespace.name, replica.name))
            if replica.phase == Replica.Phase.TERMINATING:
                if observed is None:
                    gone.append(replica.pk)
                    affected.add(replica.deployment_id)
                continue
            if observed is None:
                continue  # not created yet: the agent has not applied the set that lists it
            changed = [f for f in _OBSERVED if getattr(replica, f) != observed[f]]
            if changed:
                for field in changed:
                    setattr(replica, field, observed[field])
                replica.updated_at = now  # bulk_update does not touch auto_now fields
                updated.append(replica)
                fields.update(changed)
                affected.add(replica.deployment_id)
        if updated:
            Replica.objects.bulk_update(updated, [*sorted(fields), "updated_at"])
        if gone:
            Replica.objects.filter(pk__in=gone).delete()
            # Room freed: schedulers that cached this node's usage must read it again.
            Node.objects.filter(pk=node_id).update(resource_version=F("resource_version") + 1)
            transaction.on_commit(place_waiting_replicas)  # their room is free again
        generation = report.get("generation")
        if isinstance(generation, int):
            Node.objects.filter(pk=node_id, observed_generation__lt=generation).update(
                observed_generation=generation
            )
        if affected:
            transaction.on_commit(lambda: _after_change(affected))


def _after_change(deployment_ids: set[int]) -> None:
    from orchestrator.tasks import request_reconcile

    notify_deployments(deployment_ids)
    for deployment_id in deployment_ids:
        request_reconcile(deployment_id)


def place_waiting_replicas() -> None:
    from orchestrator.tasks import place_waiting_replicas as place

    place()
