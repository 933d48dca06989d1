"""Sending each node its full desired set through the channel layer.

Workers never talk to agents directly: they publish to the node's channel group and
the agent's consumer (web/consumers/agent.py) forwards. The node row is locked while
its generation is bumped and its set is read, so a higher generation always carries
the newer set; the agent ignores anything older than what it has applied.
"""

import logging
import threading
from collections import OrderedDict

from django.db import connection, transaction

from orchestrator.models import Replica, desired_entry
from orchestrator.publish import group_send_many

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
        rows = list(
            Replica.objects.filter(node_id__in=list(generations))
            .exclude(phase=Replica.Phase.TERMINATING)
            .order_by("pk")
            .values_list("node_id", "pk")
        )
        entries = _entries.get_many([pk for _, pk in rows])
        for node_id, pk in rows:
            if pk in entries:
                replicas[node_id].append(entries[pk])
    return [
        (node_id, {"type": "desired", "generation": generations[node_id], "replicas": replicas[node_id]})
        for node_id in sorted(generations)
    ]


class EntryCache:
    """Replicas' desired entries, kept by primary key: what an entry holds (name, namespace,
    deployment name, revision, template) never changes once the replica exists (a new
    template makes new replicas), so a node's frame is sent again without reading and
    decoding every template on it. Least recently used entries go beyond `size`."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._entries: OrderedDict[int, dict] = OrderedDict()
        self._lock = threading.Lock()  # a web process dispatches from several threads

    def get_many(self, pks: list[int]) -> dict[int, dict]:
        found: dict[int, dict] = {}
        with self._lock:
            for pk in pks:
                entry = self._entries.get(pk)
                if entry is not None:
                    self._entries.move_to_end(pk)
                    found[pk] = entry
        missing = [pk for pk in pks if pk not in found]
        read: dict[int, dict] = {}
        for start in range(0, len(missing), 5000):
            rows = Replica.objects.filter(pk__in=missing[start : start + 5000]).values_list(
                "pk", "name", "namespace__name", "deployment__name", "revision", "template"
            )
            read.update((pk, desired_entry(*values)) for pk, *values in rows)
        with self._lock:
            self._entries.update(read)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        found.update(read)  # a replica deleted meanwhile is in neither: not in the set
        return found


_entries = EntryCache()


def desired_set(node_id: int) -> dict | None:
    """One node's desired frame (with a new generation), or None if it is gone."""
    frames = desired_sets([node_id])
    return frames[0][1] if frames else None


def dispatch_nodes(node_ids) -> None:
    """Publish the current desired set to each of these nodes' agents."""
    frames = desired_sets(node_ids)
    if not frames:
        return
    group_send_many(
        (f"node.{node_id}", {"type": "desired.push", "frame": frame}) for node_id, frame in frames
    )
    log.info("dispatched desired sets to %d node(s)", len(frames))
