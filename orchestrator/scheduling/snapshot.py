"""The scheduler's snapshot of the nodes, read from PostgreSQL in three aggregate queries."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from contextlib import contextmanager

from django.db import connection
from django.db.models import BigIntegerField as BigInt
from django.db.models import Case, Count, F, Sum, Value, When

from nodes.models import Node
from orchestrator.models import Replica
from orchestrator.scheduling.model import DEFAULT_SCORE_CPU, DEFAULT_SCORE_MEMORY, NodeInfo, Taint


def _or_default(column: str, default: int):
    """The column's value, or `default` where it is 0 (a replica that requests nothing)."""
    return Case(When(**{column: 0}, then=Value(default)), default=F(column), output_field=BigInt())


_COLUMNS = (
    "id", "name", "status", "unschedulable", "agent_labels", "user_labels", "taints",
    "capacity_cpu", "capacity_memory", "reserved_cpu", "reserved_memory", "images",
    "resource_version",
)  # fmt: skip


def _node_info(row) -> NodeInfo:
    (pk, name, status, cordoned, agent_labels, user_labels, taints, cpu, memory,
     reserved_cpu, reserved_memory, images, version) = row  # fmt: skip
    return NodeInfo(
        id=pk,
        name=name,
        ready=status == Node.Status.READY,
        unschedulable=cordoned,
        labels={**agent_labels, **user_labels},
        taints=tuple(Taint(t["key"], t.get("value") or "", t["effect"]) for t in taints or []),
        allocatable_cpu=max(cpu - reserved_cpu, 0),
        allocatable_memory=max(memory - reserved_memory, 0),
        images=frozenset(images or ()),
        resource_version=version,
    )


def _load(node_ids: list[int] | None) -> dict[int, NodeInfo]:
    """Nodes (all, or these) with what occupies them: every replica placed there,
    Terminating ones included (their containers hold CPU, memory and ports until gone)."""
    # In id order (the model's order, by name, sorts strings: dearer, and of no use here).
    by_id = Node.objects.order_by("pk")
    node_rows = by_id if node_ids is None else by_id.filter(pk__in=node_ids)
    nodes = {row[0]: _node_info(row) for row in node_rows.values_list(*_COLUMNS)}
    placed = Replica.objects.filter(node__isnull=False)
    if node_ids is not None:
        placed = placed.filter(node_id__in=node_ids)
    usage = (
        placed.values("node_id")
        .annotate(
            cpu=Sum("cpu_request"),
            memory=Sum("memory_request"),
            score_cpu=Sum(_or_default("cpu_request", DEFAULT_SCORE_CPU)),
            score_memory=Sum(_or_default("memory_request", DEFAULT_SCORE_MEMORY)),
        )
        .values_list("node_id", "cpu", "memory", "score_cpu", "score_memory")
    )
    for node_id, cpu, memory, score_cpu, score_memory in usage:
        node = nodes.get(node_id)
        if node is not None:
            node.requested_cpu, node.requested_memory = cpu, memory
            node.score_cpu, node.score_memory = score_cpu, score_memory
    for node_id, host_ports in placed.exclude(host_ports=[]).values_list("node_id", "host_ports"):
        if node_id in nodes:
            nodes[node_id].host_ports |= {(port, protocol) for port, protocol in host_ports}
    return nodes


# The versions of the nodes changed by transactions no older than the given one (every
# node: "0"), how many nodes there are, and the oldest transaction still running when the
# statement's snapshot was taken: every change to a version since is by a transaction no
# older than that, or was visible to this statement, so the next read asks for those
# (`changed_xid`, set by triggers on every insert and every move of resource_version:
# nodes/migrations/0004). One statement, one snapshot, one pass over the table; the two
# arrays are aggregated over the same rows in the same order.
_CHANGED = (
    "SELECT count(*), array_agg(id) FILTER (WHERE changed_xid >= %(since)s::xid8), "  # noqa: S608
    "array_agg(resource_version) FILTER (WHERE changed_xid >= %(since)s::xid8), "
    f"pg_snapshot_xmin(pg_current_snapshot()) FROM {Node._meta.db_table}"
)


class SnapshotCache:
    """The snapshot, kept between passes in one worker process and brought up to date by
    resource_version: every change to what placement reads about a node (its labels,
    taints, status, room, a placement onto it, a replica leaving it) bumps the version,
    so only nodes whose version moved are read again. A scan reads the versions of the
    nodes changed since the previous scan (by transactions that had not finished when it
    read: see _CHANGED), not every node and every replica; the first one reads every
    node's version. A node deleted, or the database's transaction ids going back (another
    cluster), makes it read every version again.

    Placements this process commits are adopted as they are (`adopt`), so they cost no
    re-read. Within `held()` (one batch of passes), only the first pass scans; the later
    ones re-read just the nodes forgotten meanwhile. A change committed by someone else
    during the batch can then go unseen until the next batch: it can make a claim lose
    (and the node is re-read), never over-commit; and whatever committed it also asked for
    a new pass, which scans."""

    # Beyond this share of nodes changed, one full read is cheaper than many filtered ones.
    FULL_RELOAD_SHARE = 0.5

    def __init__(self) -> None:
        self._nodes: dict[int, NodeInfo] = {}
        self._forgotten: set[int] = set()
        # The oldest transaction running at the last scan (None: read every version next).
        self._since: str | None = None
        self._held = False
        self._scanned = False
        # Nodes whose deployment_counts may be set (by the last take, or by schedule()
        # placing onto them before they were adopted): cleared at the next take, rather
        # than visiting every node of the fleet at each pass.
        self._counted: set[int] = set()

    def take(
        self, deployment_id: int | None = None, placed: Mapping[int, int] | None = None
    ) -> list[NodeInfo]:
        if not (self._held and self._scanned):
            self._scan()
        # Forgotten nodes no scan found changed (a pass placed onto them in memory, then
        # did not commit): as they are in the database.
        missing = sorted(pk for pk in self._forgotten if pk not in self._nodes)
        if missing:
            self._nodes.update(_load(missing))
        self._forgotten.clear()
        self._scanned = True
        for pk in self._counted:
            node = self._nodes.get(pk)
            if node is not None:
                node.deployment_counts.clear()
        self._counted = set() if deployment_id is None else _count_placed(self._nodes, deployment_id, placed)
        return list(self._nodes.values())

    def _scan(self) -> None:
        # Unsorted, and as two arrays: at a full scan thousands of versions, where the ORM's
        # per-row work cost more than the query.
        full = self._since is None
        with connection.cursor() as cursor:
            cursor.execute(_CHANGED, {"since": "0" if full else self._since})
            count, ids, changed, since = cursor.fetchone()
        versions = dict(zip(ids or (), changed or (), strict=True))
        if not full and int(since) < int(self._since):
            self._since = None  # transaction ids went back: another database
            return self._scan()
        if full:
            for pk in set(self._nodes) - set(versions):
                del self._nodes[pk]
        stale = [pk for pk, version in versions.items() if self._version(pk) != version]
        if len(stale) > self.FULL_RELOAD_SHARE * max(count, 1):
            self._nodes = _load(None)
        elif stale:
            self._nodes.update(_load(stale))
        self._since = str(since)  # psycopg reads xid8 as text; text is what the cast takes
        known = len(self._nodes) + sum(1 for pk in self._forgotten if pk not in self._nodes)
        if not full and known != count:  # a node deleted (or added and deleted) meanwhile
            self._since = None
            self._scan()

    def _version(self, pk: int) -> int | None:
        node = self._nodes.get(pk)
        return None if node is None else node.resource_version

    def forget(self, node_ids=None) -> None:
        """Read these nodes (default: all) again next time: a pass changed them in memory
        (placing onto them) and may not commit."""
        if node_ids is None:
            self._nodes.clear()
            self._scanned = False
            self._since = None
        for pk in node_ids or ():
            if self._nodes.pop(pk, None) is not None:
                self._forgotten.add(pk)

    def adopt(self, nodes: list[NodeInfo]) -> None:
        """These nodes, as a pass left them, are what was committed (their versions already
        the committed ones): keep them instead of reading them again, unless the cache has
        read them since."""
        for node in nodes:
            if node.id not in self._nodes and node.id in self._forgotten:
                self._nodes[node.id] = node
                self._forgotten.discard(node.id)
                self._counted.add(node.id)  # schedule() counted its picks into it

    def rescan(self) -> None:
        """Scan the versions at the next take (those changed since the last scan), even
        within a batch."""
        self._scanned = False

    @contextmanager
    def held(self):
        self._held, self._scanned = True, False
        try:
            yield
        finally:
            self._held = False


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.cache = SnapshotCache()


# One cache per thread: a Celery prefork child has one; tests that schedule from several
# threads at once get one each (the optimistic commit keeps them honest with each other).
_local = _PerThread()


def _count_placed(
    nodes: dict[int, NodeInfo], deployment_id: int, placed: Mapping[int, int] | None
) -> set[int]:
    """Set how many of the deployment's replicas each node holds (read, unless given);
    returns the nodes given a count."""
    if placed is None:
        placed = dict(
            Replica.objects.filter(node__isnull=False, deployment_id=deployment_id)
            .values("node_id")
            .annotate(n=Count("id"))
            .values_list("node_id", "n")
        )
    counted = set()
    for node_id, n in placed.items():
        if n and node_id in nodes:
            nodes[node_id].deployment_counts[deployment_id] = n
            counted.add(node_id)
    return counted


def take_snapshot(
    deployment_id: int | None = None, *, cached: bool = False, placed: Mapping[int, int] | None = None
) -> list[NodeInfo]:
    """Every node with what occupies it, each carrying the resource_version it was read at
    (for the optimistic commit). `cached=True` reuses this process's SnapshotCache: the
    caller must `forget_nodes` the nodes it placed onto (schedule() changes them).
    `placed`: how many of the deployment's replicas each node holds, Terminating ones
    included, when the caller knows (a pass has read them all); else they are read."""
    if cached:
        return _local.cache.take(deployment_id, placed)
    nodes = _load(None)
    if deployment_id is not None:
        _count_placed(nodes, deployment_id, placed)
    return list(nodes.values())


def forget_nodes(node_ids=None) -> None:
    _local.cache.forget(node_ids)


def rescan_nodes() -> None:
    _local.cache.rescan()


def adopt_nodes(nodes: list[NodeInfo]) -> None:
    _local.cache.adopt(nodes)


def snapshot_held():
    """A batch of passes in this thread: the snapshot's version scan (of the nodes changed
    since the last) runs once, at its start."""
    return _local.cache.held()
