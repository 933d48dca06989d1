"""What happens when an agent connects, says hello, or goes away.

Called by the agent consumer (web/consumers/agent.py). A node has one current session
(the newest connection); a stale connection closing never marks a live node NotReady.
"""

import logging
import uuid

from django.db import transaction
from django.utils import timezone

from nodes.models import Node
from orchestrator.broadcast import notify_cluster
from orchestrator.events import record_event
from orchestrator.models import Replica

log = logging.getLogger(__name__)

# An agent's consumer joins its node's channel group again within this long of a heartbeat
# flush finding Redis without its data (nodes.heartbeats.data_epoch), at its next heartbeat:
# a Redis that was restarted or flushed forgot the group, and desired sets published to it
# would reach nobody.
GROUP_REFRESH_SECONDS = 1.0


def _int(value, default=0) -> int:
    try:
        return max(int(value), 0)
    except (TypeError, ValueError):
        return default


def _labels(value) -> dict:
    if not isinstance(value, dict):
        return {}
    return {str(k)[:253]: str(v)[:63] for k, v in value.items()}


MAX_IMAGES = 500  # as many as the agent sends (agent/protocol.py)


def _images(value) -> list[str]:
    if not isinstance(value, list):
        return []
    return [item[:255] for item in value[:MAX_IMAGES] if isinstance(item, str) and item]


def session_hello(node_id: int, session: uuid.UUID, hello: dict, address: str) -> None:
    """Record what the agent reports about its server and mark the node Ready."""
    now = timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node_id)
        placement_reads = (
            node.capacity_cpu,
            node.capacity_memory,
            node.agent_labels,
            node.status,
            node.images,
        )
        node.capacity_cpu = _int(hello.get("capacity", {}).get("cpu"), node.capacity_cpu)
        node.capacity_memory = _int(hello.get("capacity", {}).get("memory"), node.capacity_memory)
        node.engine_version = str(hello.get("engine_version", ""))[:64]
        node.agent_version = str(hello.get("agent_version", ""))[:64]
        if "labels" in hello:
            node.agent_labels = _labels(hello["labels"])
        if "images" in hello:
            node.images = _images(hello["images"])  # for the scheduler's image locality
        node.address = address[:255]
        node.session = session
        node.last_heartbeat = now
        became_ready = node.mark_ready(now)
        if placement_reads != (
            node.capacity_cpu,
            node.capacity_memory,
            node.agent_labels,
            node.status,
            node.images,
        ):
            node.resource_version += 1  # a scheduler that read the old values must re-plan
        node.save()
        if became_ready:
            record_event(node, "NodeReady", "agent connected", now=now)
            transaction.on_commit(place_waiting_replicas)
        transaction.on_commit(notify_cluster)


def session_closed(node_id: int, session: uuid.UUID) -> None:
    """The agent's connection closed: if it was the current one, the node is NotReady."""
    now = timezone.now()
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id, session=session).first()
        if node is None:
            return  # a newer connection took over, or the node is gone
        node.session = None
        node.save(update_fields=["session"])
        mark_node_lost(node, now, "AgentDisconnected", "the agent closed its connection")


def mark_node_lost(node: Node, now, reason: str, message: str) -> bool:
    """NotReady, and its replicas' state Unknown until it reports again. Must run in a
    transaction holding the node row."""
    if not node.mark_not_ready(now, reason, message):
        return False
    node.resource_version += 1  # schedulers that read it Ready must re-plan
    node.save(
        update_fields=["status", "status_reason", "status_message", "status_changed_at", "resource_version"]
    )
    affected = list(
        Replica.objects.filter(node=node, phase__in=Replica.REPORTABLE).values_list(
            "deployment_id", flat=True
        )
    )
    Replica.objects.filter(node=node, phase__in=Replica.REPORTABLE).update(
        phase=Replica.Phase.UNKNOWN, message=f"node {node.name} is not ready: {message}", updated_at=now
    )
    record_event(node, "NodeNotReady", message, warning=True, now=now)
    log.warning("node %s is NotReady: %s", node.name, message)
    transaction.on_commit(lambda: reconcile_deployments(set(affected)))
    transaction.on_commit(notify_cluster)
    return True


def reconcile_deployments(deployment_ids) -> None:
    """Ask for a reconcile of each deployment (call after commit; requests for a
    deployment whose pass is already queued fold into it)."""
    from orchestrator import tasks

    tasks.request_reconciles(deployment_ids)


def place_waiting_replicas() -> None:
    """Room may have appeared (a node became Ready, was uncordoned, relabelled, untainted,
    or reserves less): deployments with unplaced replicas get another placement pass."""
    from orchestrator import tasks

    tasks.place_waiting_replicas()
