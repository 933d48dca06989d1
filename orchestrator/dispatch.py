"""Sending each node its full desired set through the channel layer.

Workers never talk to agents directly: they publish to the node's channel group and
the agent's consumer (web/consumers/agent.py) forwards. The node row is locked while
its generation is bumped and its set is read, so a higher generation always carries
the newer set; the agent ignores anything older than what it has applied.
"""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection, transaction

from orchestrator.models import Replica, desired_entry

log = logging.getLogger(__name__)


def desired_sets(node_ids) -> list[tuple[int, dict]]:
    """Bump these nodes' generations and read their desired frames, in one transaction
    (the UPDATE locks the rows until commit). Vanished nodes are skipped."""
    ids = sorted(set(node_ids))
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Lock in id order first, as the scheduler's claims do, so the two never deadlock.
            cursor.execute("SELECT id FROM nodes_node WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
            cursor.execute(
                "UPDATE nodes_node SET generation = generation + 1 WHERE id = ANY(%s) "
                "RETURNING id, generation",
                [ids],
            )
            generations = dict(cursor.fetchall())
        replicas: dict[int, list[dict]] = {node_id: [] for node_id in generations}
        rows = (
            Replica.objects.filter(node_id__in=list(generations))
            .exclude(phase=Replica.Phase.TERMINATING)
            .order_by("pk")
            .values_list("node_id", "name", "namespace__name", "deployment__name", "revision", "template")
        )
        for node_id, *values in rows:
            replicas[node_id].append(desired_entry(*values))
    return [
        (node_id, {"type": "desired", "generation": generations[node_id], "replicas": replicas[node_id]})
        for node_id in sorted(generations)
    ]


def desired_set(node_id: int) -> dict | None:
    """One node's desired frame (with a new generation), or None if it is gone."""
    frames = desired_sets([node_id])
    return frames[0][1] if frames else None


def dispatch_nodes(node_ids) -> None:
    """Publish the current desired set to each of these nodes' agents."""
    frames = desired_sets(node_ids)
    if not frames:
        return

    async def publish():
        layer = get_channel_layer()
        for node_id, frame in frames:
            await layer.group_send(f"node.{node_id}", {"type": "desired.push", "frame": frame})

    async_to_sync(publish)()
    log.info("dispatched desired sets to %d node(s)", len(frames))
