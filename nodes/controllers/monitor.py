"""The node monitor: Ready nodes whose agent stopped heartbeating turn NotReady.

Reads: heartbeats from Redis, Ready nodes from PostgreSQL. Writes: node status (and its
replicas' phase Unknown) on a transition, and a coarse `last_heartbeat`. Runs every
second or so from beat; a singleton through an advisory lock; a rerun finds nothing new.
"""

from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nodes import heartbeats
from nodes.models import Node
from nodes.sessions import mark_node_lost
from orchestrator.locks import try_transaction_lock

# last_heartbeat in PostgreSQL is for people; it moves when it is this much behind.
_COARSE = timedelta(seconds=5)


def monitor_nodes(now: datetime | None = None) -> list[str]:
    """Mark nodes lost whose heartbeat is older than the grace; the names it marked."""
    now = now or timezone.now()
    grace = timedelta(seconds=settings.NODE_GRACE_SECONDS)
    beats = {k: datetime.fromtimestamp(v, tz=UTC) for k, v in heartbeats.read_all().items()}
    lost = []
    with transaction.atomic():
        if not try_transaction_lock("berth.node-monitor"):
            return lost
        for node in Node.objects.select_for_update(skip_locked=True).filter(status=Node.Status.READY):
            last = max(
                filter(None, [beats.get(node.pk), node.last_heartbeat]), default=node.status_changed_at
            )
            silent = now - last
            if silent > grace:
                message = (
                    f"no heartbeat for {silent.total_seconds():.0f} s "
                    f"(grace {settings.NODE_GRACE_SECONDS:g} s)"
                )
                if mark_node_lost(node, now, "HeartbeatTimeout", message):
                    lost.append(node.name)
            elif node.last_heartbeat is None or last - node.last_heartbeat >= _COARSE:
                Node.objects.filter(pk=node.pk).update(last_heartbeat=last)
    return lost
