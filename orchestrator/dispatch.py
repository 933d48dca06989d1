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
            .values_list("node_id", "pk", "name", "namespace__name", "deployment__name", "revision")
        )
        carriers: dict[str, list[int]] = {}
        for row in rows:
            carriers.setdefault(row[-1], []).append(row[1])
        templates = _templates.get_many(carriers)
        for node_id, _, name, namespace, deployment, revision in rows:
            if revision in templates:  # else every replica of it was deleted meanwhile
                entry = desired_entry(name, namespace, deployment, revision, templates[revision])
                replicas[node_id].append(entry)
    return [
        (node_id, {"type": "desired", "generation": generations[node_id], "replicas": replicas[node_id]})
        for node_id in sorted(generations)
    ]


READ_CHUNK = 5000  # replicas named in one query


class TemplateCache:
    """Replica templates by revision. A revision is the hash of its template
    (orchestrator.models.template_hash), so each is read and decoded once per process,
    whichever replica carries it, and a node's frame is built again without reading a
    template. Least recently used revisions go beyond `size`."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._templates: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()  # a web process dispatches from several threads

    def get_many(self, carriers: dict[str, list[int]]) -> dict[str, dict]:
        """The template of each revision; `carriers` names the replicas (pks) carrying each.
        A revision whose replicas were all deleted meanwhile is left out."""
        found: dict[str, dict] = {}
        with self._lock:
            for revision in carriers:
                template = self._templates.get(revision)
                if template is not None:
                    self._templates.move_to_end(revision)
                    found[revision] = template
        missing = [pk for revision, pks in carriers.items() if revision not in found for pk in pks]
        read: dict[str, dict] = {}
        for start in range(0, len(missing), READ_CHUNK):  # one row per revision, bounded queries
            chunk = missing[start : start + READ_CHUNK]
            rows = Replica.objects.filter(pk__in=chunk).exclude(revision__in=list(read))
            read.update(rows.order_by("revision").distinct("revision").values_list("revision", "template"))
            if len(read) + len(found) == len(carriers):
                break
        with self._lock:
            self._templates.update(read)
            while len(self._templates) > self.size:
                self._templates.popitem(last=False)
        found.update(read)
        return found


_templates = TemplateCache()


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
