"""Sending each node its desired set through the channel layer.

Workers never talk to agents directly: they publish to the node's channel group and
the agent's consumer (web/consumers/agent.py) forwards. The node row is locked while
its generation is bumped and its set is read, so a higher generation always carries
the newer set; the agent ignores anything older than what it has applied.

A frame names every replica of the set but carries in full only the entries its agent
may not have (`partial`, docs/agent-protocol.md): those first sent after the generation
the agent last reported applied. A replica's entry never changes (a new revision is a new
replica), so an agent that has an entry from an earlier frame can use it. Without this,
a node given 20 replicas one deployment at a time would receive 1 + 2 + ... + 20 entries,
each with its whole template, and the web processes and the agent would encode and parse
them all. An agent that misses one (a frame was lost) asks for the full set.
"""

import logging
import threading
from collections import OrderedDict

from django.db import connection, transaction

from orchestrator.models import Replica, desired_entry
from orchestrator.publish import group_send_many

log = logging.getLogger(__name__)

# Rows another transaction holds (an agent's report being applied) are skipped: they stay
# unmarked, so the next frame carries them again, which is only a few bytes more.
_MARK_SENT = (
    f"UPDATE {Replica._meta.db_table} AS r SET sent_generation = v.generation "  # noqa: S608
    "FROM unnest(%s::bigint[], %s::bigint[]) AS v(id, generation) "
    f"WHERE r.id = v.id AND r.id IN (SELECT id FROM {Replica._meta.db_table} "
    "WHERE id = ANY(%s) AND sent_generation IS NULL FOR UPDATE SKIP LOCKED)"
)


def desired_sets(node_ids, *, partial: bool = False) -> list[tuple[int, dict]]:
    """Bump these nodes' generations and read their desired frames, in one transaction
    (the UPDATE locks the rows until commit). Vanished nodes are skipped. `partial`: each
    frame carries in full only the entries its agent may lack (see the module's doc)."""
    ids = sorted(set(node_ids))
    with transaction.atomic():
        with connection.cursor() as cursor:
            # Lock in id order first, as the scheduler's claims do, so the two never deadlock.
            cursor.execute("SELECT id FROM nodes_node WHERE id = ANY(%s) ORDER BY id FOR UPDATE", [ids])
            cursor.execute(
                "UPDATE nodes_node SET generation = generation + 1 WHERE id = ANY(%s) "
                "RETURNING id, generation, observed_generation",
                [ids],
            )
            generations, applied = {}, {}
            for node_id, generation, observed in cursor.fetchall():
                generations[node_id], applied[node_id] = generation, observed
        names: dict[int, list[list[str]]] = {node_id: [] for node_id in generations}
        rows = list(
            Replica.objects.filter(node_id__in=list(generations))
            .exclude(phase=Replica.Phase.TERMINATING)
            .order_by("pk")
            .values_list(
                "node_id", "pk", "name", "namespace__name", "deployment__name", "revision", "sent_generation"
            )
        )
        carried, first_sent = [], []
        for row in rows:
            node_id, pk, name, namespace, _, _, sent = row
            names[node_id].append([namespace, name])
            if sent is None:
                first_sent.append(pk)
            if not partial or sent is None or sent > applied[node_id]:
                carried.append(row)
        carriers: dict[str, list[int]] = {}
        for row in carried:
            carriers.setdefault(row[5], []).append(row[1])
        templates = _templates.get_many(carriers)
        entries: dict[int, list[dict]] = {node_id: [] for node_id in generations}
        for node_id, _, name, namespace, deployment, revision, _ in carried:
            if revision in templates:  # else every replica of it was deleted meanwhile
                entries[node_id].append(
                    desired_entry(name, namespace, deployment, revision, templates[revision])
                )
    if first_sent:
        # After the nodes' locks are released: report application locks replicas, then
        # nodes; marking replicas while holding the nodes would deadlock with it. A frame
        # that went out unmarked is only carried again (a dispatch after it marks it with
        # its own, later generation: the entry is then carried a little longer).
        by_pk = {row[1]: generations[row[0]] for row in rows if row[6] is None}
        with connection.cursor() as cursor:
            cursor.execute(_MARK_SENT, [first_sent, [by_pk[pk] for pk in first_sent], first_sent])
    frames = []
    for node_id in sorted(generations):
        frame = {"type": "desired", "generation": generations[node_id], "replicas": entries[node_id]}
        if partial:
            frame["partial"] = True
            frame["names"] = names[node_id]
        frames.append((node_id, frame))
    return frames


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


def dispatch_nodes(node_ids, *, full: bool = False) -> None:
    """Publish the current desired set to each of these nodes' agents: partial frames, or
    `full` ones (an agent answers a full set with the state of every replica it runs)."""
    frames = desired_sets(node_ids, partial=not full)
    if not frames:
        return
    group_send_many(
        (f"node.{node_id}", {"type": "desired.push", "frame": frame}) for node_id, frame in frames
    )
    log.info("dispatched desired sets to %d node(s)", len(frames))
