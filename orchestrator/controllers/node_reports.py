"""Applying what an agent reports about the containers it runs.

Reads: the node's replicas. Writes: their observed fields (phase, container, exit code,
restarts, times); deletes Terminating replicas whose container the agent no longer has;
the node's observed generation. Safe to rerun: a report is a full snapshot, applying
it twice leaves the same rows.
"""

import logging
from datetime import datetime

from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nodes.models import Node
from orchestrator.broadcast import notify_deployments
from orchestrator.models import Replica

log = logging.getLogger(__name__)

# What an agent observes of a replica: the columns a report writes, with their SQL types.
_OBSERVED_TYPES = {
    "phase": "text",
    "container_id": "text",
    "exit_code": "integer",
    "last_exit_code": "integer",
    "message": "text",
    "restart_count": "integer",
    "started_at": "timestamptz",
    "finished_at": "timestamptz",
    "ready": "boolean",
    "ready_since": "timestamptz",
    "health": "text",
}
_OBSERVED = tuple(_OBSERVED_TYPES)
# One statement locks (in id order, skipping any the controller marked Terminating
# meanwhile) and writes every observed field of many replicas. Built from this module's
# constants only: no input reaches the text.
_UPDATE = (
    "WITH locked AS MATERIALIZED (SELECT id FROM "  # noqa: S608
    f"{Replica._meta.db_table} WHERE id = ANY(%s) AND phase <> %s ORDER BY id FOR UPDATE) "
    f"UPDATE {Replica._meta.db_table} AS r SET "
    + ", ".join(f"{f} = v.{f}" for f in _OBSERVED)
    + ", updated_at = %s FROM locked, unnest(%s::bigint[], "
    + ", ".join(f"%s::{sql_type}[]" for sql_type in _OBSERVED_TYPES.values())
    + f") AS v(id, {', '.join(_OBSERVED)}) WHERE r.id = locked.id AND r.id = v.id RETURNING r.id"
)
_HEALTH = ("starting", "healthy", "unhealthy")


def _time(value) -> datetime | None:
    if not value or not isinstance(value, str):
        return None
    try:
        return parse_datetime(value)
    except ValueError:
        return None


def _is_int32(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**31


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
        "exit_code": exit_code if _is_int32(exit_code) else None,
        "last_exit_code": last_exit_code if _is_int32(last_exit_code) else None,
        "message": str(entry.get("message") or "")[:2000],
        "restart_count": restarts if _is_int32(restarts) and restarts >= 0 else 0,
        "started_at": started_at,
        "finished_at": _time(entry.get("finished_at")),
        "ready": ready,
        "ready_since": ready_since,
        "health": health if health in _HEALTH else "",
    }


def _key(entry) -> tuple[str, str] | None:
    if not isinstance(entry, dict):
        return None
    return (str(entry.get("namespace")), str(entry.get("name")))


def _names(report: dict) -> set[tuple[str, str]] | None:
    """Every replica a partial report names (None: the report is full, its entries are all)."""
    if report.get("full", True) is not False:
        return None
    names = report.get("names")
    if not isinstance(names, list):
        return set()
    return {(str(pair[0]), str(pair[1])) for pair in names if isinstance(pair, list) and len(pair) == 2}


def merge_reports(older: dict, newer: dict) -> dict:
    """One report standing for two of a node's, applied in order: a full one replaces what
    came before it; a partial one updates the entries it carries and drops those it no
    longer names (agents send partial reports only when the welcome allows them)."""
    names = _names(newer)
    if (
        names is None
        or not isinstance(older.get("replicas"), list)
        or not isinstance(newer.get("replicas"), list)
    ):
        return newer
    entries = {key: entry for entry in older["replicas"] if (key := _key(entry)) is not None and key in names}
    entries.update((key, entry) for entry in newer["replicas"] if (key := _key(entry)) is not None)
    full = _names(older) is None and names <= set(entries)  # every named replica's state is here
    return {**newer, "full": full, "replicas": list(entries.values())}


def _reported(node_id: int, report: dict) -> dict[tuple[str, str], dict] | None:
    """The report's replicas as {(namespace, name): model fields}; None if it is malformed."""
    entries = report.get("replicas")
    if not isinstance(entries, list):
        log.warning("node %s sent a status without a replica list; ignored", node_id)
        return None
    reported: dict[tuple[str, str], dict] = {}
    for entry in entries:
        if isinstance(entry, dict):
            fields = _observed_fields(entry)
            if fields is not None:
                reported[(str(entry.get("namespace")), str(entry.get("name")))] = fields
    return reported


def apply_node_report(node_id: int, report: dict) -> None:
    apply_node_reports({node_id: report})


def apply_node_reports(reports: dict[int, dict]) -> None:
    """Apply the latest report (full, or partial: docs/agent-protocol.md) of each of these
    nodes together. A web process batches its agents' reports this way
    (web/consumers/reports.py), so many agents reporting at once cost one round of queries.

    Most of a full report repeats what is stored, so the rows are read as plain values, unlocked, and only
    the replicas that changed are locked (in pk order, as the deployment controller locks
    them: no deadlock) and written; a replica the controller marked Terminating meanwhile
    is left to it. Replicas are written in one statement, nodes (generations, freed room)
    after it, so nothing here waits for a node while holding replicas. A batch is three
    round trips (four with both full and partial reports): the rows read, the replicas
    written, the generations written."""
    parsed = {node_id: _reported(node_id, report) for node_id, report in reports.items()}
    parsed = {node_id: reported for node_id, reported in parsed.items() if reported is not None}
    if not parsed:
        return
    terminating = Replica.Phase.TERMINATING
    # A full report is compared with every replica of its node. A partial one only with those
    # it carries (the others did not change) and those being stopped (gone when not named).
    partial = [node_id for node_id in parsed if reports[node_id].get("full", True) is False]
    full = [node_id for node_id in parsed if reports[node_id].get("full", True) is not False]
    named: dict[int, set | None] = {}  # a partial report's names, read only for a node stopping some

    def still_named(node_id: int, key: tuple[str, str]) -> bool:
        if node_id not in named:
            named[node_id] = _names(reports[node_id])
        names = named[node_id]
        return names is not None and key in names

    carried = sorted({name for node_id in partial for _, name in parsed[node_id]})
    columns = ("pk", "node_id", "deployment_id", "namespace__name", "name", *_OBSERVED)
    rows = []
    if full:  # two queries rather than an OR of both: each one a plain scan of the node index
        rows += Replica.objects.filter(node_id__in=full).order_by().values_list(*columns)
    if partial:  # (no ORDER BY: the model's default sort is of no use here)
        wanted = Q(phase=terminating) | Q(name__in=carried)
        rows += Replica.objects.filter(wanted, node_id__in=partial).order_by().values_list(*columns)
    gone, freed, changes, affected = [], set(), {}, set()
    for pk, node_id, deployment_id, namespace, name, *stored in rows:
        observed = parsed[node_id].get((namespace, name))
        if stored[0] == terminating:
            if observed is None and not still_named(node_id, (namespace, name)):
                gone.append(pk)
                freed.add(node_id)
                affected.add(deployment_id)
            continue
        if observed is None:
            continue  # not created yet: the agent has not applied the set that lists it
        if any(value != observed[f] for f, value in zip(_OBSERVED, stored, strict=True)):
            changes[pk] = (deployment_id, observed)
    # The generation each agent says it applied (a report that follows a new desired set
    # carries a newer one than recorded; most reports only change replicas' states).
    generations = {
        node_id: generation
        for node_id in parsed
        if isinstance(generation := reports[node_id].get("generation"), int)
        and not isinstance(generation, bool)
        and 0 <= generation < 2**63
    }
    if changes:
        # A replica the controller marked Terminating meanwhile is skipped (it got there first).
        written = _write_observed(changes, timezone.now())
        affected.update(changes[pk][0] for pk in written)
    # Node rows are written after the replicas' are committed: waiting for a node while
    # holding replicas deadlocked with the node monitor, which locks a node and then its
    # replicas (as the transaction below does).
    if gone:
        with transaction.atomic():
            # Node rows are locked in id order, as schedulers' claims and dispatch lock them:
            # an UPDATE of several rows at once would lock them in any order and deadlock.
            list(
                Node.objects.select_for_update().filter(pk__in=sorted(freed)).order_by("pk").values_list("pk")
            )
            Replica.objects.filter(pk__in=gone, phase=terminating).delete()
            # Room freed: schedulers that cached these nodes' usage must read them again.
            Node.objects.filter(pk__in=sorted(freed)).update(resource_version=F("resource_version") + 1)
            transaction.on_commit(place_waiting_replicas)  # their room is free again
    if generations:
        _record_generations(generations)
    if affected:
        transaction.on_commit(lambda: _after_change(affected))


# Like _UPDATE, it locks the rows it writes in id order (a CTE, MATERIALIZED: computed
# once, so the locking follows its ORDER BY), as claims and dispatch lock nodes, so no two
# writers deadlock. A row that no longer qualifies once its lock is granted (READ COMMITTED checks
# the newest version) is skipped. `n.id = ANY` lets the planner find the rows by the primary
# key: joined to the unnest alone, it often chose to read every node (a table whose pages
# the fleet's constant updates leave half dead), 6.5 ms a call on average at 5,000 nodes
# (benchmarks/scheduler_throughput.py --pg-statements).
_RECORD_GENERATIONS = (
    f"WITH behind AS MATERIALIZED (SELECT n.id, v.generation FROM {Node._meta.db_table} AS n "  # noqa: S608
    "JOIN unnest(%s::bigint[], %s::bigint[]) AS v(id, generation) ON v.id = n.id "
    "WHERE n.id = ANY(%s) AND n.observed_generation < v.generation ORDER BY n.id FOR UPDATE OF n) "
    f"UPDATE {Node._meta.db_table} AS n SET observed_generation = behind.generation "
    "FROM behind WHERE n.id = behind.id"
)


def _record_generations(generations: dict[int, int]) -> None:
    """The generations the agents applied, where newer than the recorded ones; only those
    nodes are locked, and only for this one statement."""
    with connection.cursor() as cursor:
        ids = list(generations)
        cursor.execute(_RECORD_GENERATIONS, [ids, list(generations.values()), ids])


def _write_observed(changes: dict[int, tuple[int, dict]], now) -> list[int]:
    """Every observed field of these replicas (pk -> (deployment, fields)) but those now
    Terminating, in one statement (the ORM's bulk_update builds a CASE per row and field:
    most of a busy web process's time went there). Returns the pks written."""
    pks = sorted(changes)
    columns = [[changes[pk][1][f] for pk in pks] for f in _OBSERVED]
    with connection.cursor() as cursor:
        cursor.execute(_UPDATE, [pks, Replica.Phase.TERMINATING, now, pks, *columns])
        return [row[0] for row in cursor.fetchall()]


def _after_change(deployment_ids: set[int]) -> None:
    from orchestrator.tasks import request_reconciles

    notify_deployments(deployment_ids)
    request_reconciles(deployment_ids, background=True)


def place_waiting_replicas() -> None:
    from orchestrator.tasks import place_waiting_replicas as place

    place()
