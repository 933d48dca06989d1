"""Sending each node its full desired set through the channel layer.

Workers never talk to agents directly: they publish to the node's channel group and
the agent's consumer (web/consumers/agent.py) forwards. The node row is locked while
its generation is bumped and its set is read, so a higher generation always carries
the newer set; the agent ignores anything older than what it has applied.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from nodes.models import Node
from orchestrator.models import Replica

log = logging.getLogger(__name__)


def desired_set(node_id: int) -> dict | None:
    """Bump the node's generation and return its desired frame, or None if it is gone."""
    with transaction.atomic():
        node = Node.objects.select_for_update().filter(pk=node_id).first()
        if node is None:
            return None
        node.generation += 1
        node.save(update_fields=["generation"])
        replicas = (
            Replica.objects.filter(node_id=node_id)
            .exclude(phase=Replica.Phase.TERMINATING)
            .select_related("namespace", "deployment")
            .order_by("pk")
        )
        return {
            "type": "desired",
            "generation": node.generation,
            "replicas": [replica.desired_entry() for replica in replicas],
        }


def dispatch_nodes(node_ids) -> None:
    """Publish the current desired set to each of these nodes' agents."""
    layer = get_channel_layer()
    for node_id in sorted(set(node_ids)):
        frame = desired_set(node_id)
        if frame is None:
            continue
        async_to_sync(layer.group_send)(f"node.{node_id}", {"type": "desired.push", "frame": frame})
        log.info(
            "dispatched generation %s (%s replicas) to node %s",
            frame["generation"],
            len(frame["replicas"]),
            node_id,
        )
