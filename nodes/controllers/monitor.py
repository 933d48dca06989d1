"""The node monitor: Ready nodes whose agent stopped heartbeating turn NotReady, and
NotReady nodes whose connected agent heartbeats again (it was frozen, or the network
hiccuped without closing the connection) turn Ready.

Reads: heartbeats from Redis, nodes from PostgreSQL. Writes: node status (and its
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
from orchestrator.dispatch import dispatch_nodes
from orchestrator.events import record_event
from orchestrator.locks import try_transaction_lock

# last_heartbeat in PostgreSQL is for people; it moves when it is this much behind.
_COARSE = timedelta(seconds=5)


def monitor_nodes(now: datetime | None = None) -> list[str]:
    """Mark nodes lost whose heartbeat is older than the grace; the names it marked lost."""
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
        _recover(beats, now, grace)
    return lost


def _recover(beats: dict, now: datetime, grace: timedelta) -> None:
    """Connected agents that heartbeat again make their node Ready; their desired set is
    sent again, so they report every replica afresh (their phases were set Unknown)."""
    candidates = Node.objects.select_for_update(skip_locked=True).filter(
        status=Node.Status.NOT_READY, session__isnull=False, status_reason="HeartbeatTimeout"
    )
    for node in candidates:
        beat = beats.get(node.pk)
        if beat is None or now - beat > grace or beat <= node.status_changed_at:
            continue
        node.last_heartbeat = beat
        node.mark_ready(now)
        node.resource_version += 1  # placement reads readiness
        node.save()
        record_event(node, "NodeReady", "heartbeats resumed", now=now)
        transaction.on_commit(lambda node_id=node.pk: dispatch_nodes([node_id]))
