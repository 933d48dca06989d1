"""The deployment controller.

`reconcile_deployment(pk)` reads a deployment's spec and all its replicas, decides with
the pure `compute_plan`, places unscheduled replicas with the scheduler seam, writes
status, and, after commit, sends the affected nodes their new desired sets.

Reads: the deployment, its replicas, the node snapshot. Writes: replicas (create,
Terminating, delete, node assignment), the deployment's status, events.
Safe to rerun: the deployment row is locked for the whole pass, and a pass over a
converged deployment decides nothing and writes nothing.
"""

import logging
import os
import random
import string
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Q
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nodes.models import Node
from orchestrator import services
from orchestrator.broadcast import notify_deployments
from orchestrator.bulk_insert import insert_alike
from orchestrator.controllers.plan import ReplicaState, compute_plan, resolve_rollout
from orchestrator.controllers.rollout import CRASH_LOOP_RESTARTS, RolloutCounts, assess
from orchestrator.dispatch import dispatch_nodes
from orchestrator.events import record_event
from orchestrator.models import Deployment, Replica
from orchestrator.scheduling.commit import claim_nodes
from orchestrator.scheduling.model import NodeInfo, Taint
from orchestrator.scheduling.placement import schedule
from orchestrator.scheduling.snapshot import adopt_nodes, forget_nodes, rescan_nodes, take_snapshot
from orchestrator.scheduling.spec import host_ports_of, placement_spec

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits
# The replica fields a pass reads (others it only writes).
_PASS_FIELDS = (
    "uid", "namespace_id", "deployment_id", "name", "node_id", "phase", "message", "ready",
    "ready_since", "revision", "restart_count", "created_at",
)  # fmt: skip
# A pass slower than this is logged with what it did (big deployments, contended nodes).
SLOW_PASS_SECONDS = 1.0

log = logging.getLogger(__name__)


def _replica_name(deployment: Deployment, taken: set[str]) -> str:
    # Like Kubernetes: the deployment's name and a short random suffix, within 63 characters
    # (random, not secret: Kubernetes draws them from math/rand too).
    base = deployment.name[:57]
    while True:
        name = f"{base}-{''.join(_names_random.choices(_SUFFIX_ALPHABET, k=5))}"
        if name not in taken:
            taken.add(name)
            return name


_names_random = random.Random()  # seeded from the system's entropy, again in a forked child
os.register_at_fork(after_in_child=_names_random.seed)


def _insert_new(deployment, revision, template, node_ids: list, now, taken: set[str], message="") -> list:
    """Create a replica for each of `node_ids` (None: not placed, with `message`), under
    names free in the namespace. Names are random, so a clash with another deployment's
    replica is rare: the unique constraint finds it as the rows go in (no query first),
    and a clashing row is drawn another name and inserted again."""
    created: list[Replica] = []
    while node_ids:
        fresh = [
            _new_replica(
                deployment, revision, template, _replica_name(deployment, taken), node_id, now, message
            )
            for node_id in node_ids
        ]
        inserted = insert_alike(fresh, _NEW_REPLICA_VARYING, skip_conflicts=_NAME_CONFLICT)
        created += inserted
        node_ids = [replica.node_id for replica in fresh if replica.pk is None]  # skipped: clashed
    return created


@dataclass
class Effects:
    """What passes leave to do once they have committed, gathered over a batch of passes
    (orchestrator.tasks.reconcile_pending): the nodes to send their desired sets, the
    deployments whose viewers to tell. Each node gets one frame per batch, not one per
    deployment placed onto it. `send` sends the nodes theirs: dispatch_nodes, here and
    now, unless given (the scheduler's batches hand them to the worker)."""

    nodes: set[int] = field(default_factory=set)
    deployments: set[int] = field(default_factory=set)
    send: Callable[[list[int]], None] | None = None

    def flush(self) -> None:
        """Send what gathered; what could not be sent (an outage) stays for the next flush."""
        nodes, deployments = sorted(self.nodes), sorted(self.deployments)
        if nodes:
            (self.send or dispatch_nodes)(nodes)
            self.nodes.clear()
        if deployments:
            notify_deployments(deployments)
            self.deployments.clear()


def reconcile_deployment(pk: int, effects: Effects | None = None) -> float | None:
    """One pass; returns in how many seconds another pass is due (a toleration running
    out, a replica becoming available, a progress deadline; AGAIN_NOW when it stopped at
    BURST_REPLICAS with more to place), or None. With `effects`, what
    is to be sent after the commit is added there for the caller to flush; without, it is
    sent once this pass commits."""
    now = timezone.now()
    started = time.monotonic()
    touched_nodes: set[int] = set()
    rechecks: list[float] = []
    placed: set[int] = set()
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update(of=("self",))
            .select_related("namespace")
            .filter(pk=pk)
            .first()
        )
        if deployment is None:
            return None
        # Not locked: the deployment's lock keeps other passes out, and agents' reports (which
        # write only what they observe, and never to a Terminating replica) need not wait
        # for a pass. What a report changes meanwhile asks for another pass.
        # Only what a pass reads: a pass asked for by agents' reports reads every replica of
        # its deployment (thousands), and timestamps and JSON are the costly columns. The
        # template is read only when an old revision's must be copied.
        rows = {r.name: r for r in deployment.replica_set.only(*_PASS_FIELDS).order_by("pk")}
        spec = placement_spec(deployment)
        nodes = _nodes_of(rows.values())
        evicted, recheck_in = _evict(spec, rows, nodes, now)
        rechecks.append(recheck_in)
        replaced, recheck_in = _replace_lost(deployment, rows, nodes, now)
        rechecks.append(recheck_in)
        touched_nodes.update(rows[name].node_id for name in [*evicted, *replaced])
        revision = deployment.revision()
        states, recheck_in = _replica_states(deployment, rows.values(), nodes, now)
        rechecks.append(recheck_in)
        rollout = resolve_rollout(deployment.update_strategy or {}, deployment.replicas, deployment.paused)
        plan = compute_plan(deployment.replicas, revision, states, rollout)
        changed = bool(evicted or replaced) or not plan.is_empty

        terminating = [rows[name] for name in plan.terminate]
        for replica in terminating:
            replica.phase = Replica.Phase.TERMINATING
            replica.ready = False
            replica.message = (
                "stopping: replaced by a newer revision"
                if replica.revision != revision
                else "stopping: no longer wanted"
            )
            if nodes.get(replica.node_id, {}).get("drain_started_at") is not None:
                replica.message = "stopping: its node is being drained"
            touched_nodes.add(replica.node_id)
        _mark_terminating(terminating, now)
        if plan.delete:
            Replica.objects.filter(pk__in=[rows[n].pk for n in plan.delete]).delete()
            for name in plan.delete:
                del rows[name]
        waiting = [r for r in rows.values() if r.node_id is None and r.phase == Replica.Phase.PENDING]
        # At most BURST_REPLICAS waiting ones placed, and as many created, per pass; the
        # rest in the next, at once (replicas with nowhere to go do not hold up creating).
        waiting, rest = waiting[:BURST_REPLICAS], waiting[BURST_REPLICAS:]
        create = min(plan.create, BURST_REPLICAS)
        more = bool(rest) or create < plan.create
        if create:
            record_event(deployment, "ScaledUp", f"created {create} replica(s)", now=now)
        if plan.terminate or plan.delete:
            count = len(plan.terminate) + len(plan.delete)
            record_event(deployment, "ScaledDown", f"stopping {count} replica(s)", now=now)

        if waiting or create:
            template, create_revision = deployment.template(), revision
            if plan.create_revision and plan.create_revision != revision:
                source = next(r for r in rows.values() if r.revision == plan.create_revision)
                template, create_revision = source.template, source.revision
            placed, raced = _place(deployment, spec, create_revision, template, waiting, create, rows, now)
            touched_nodes |= placed
            if raced:
                rechecks.append(RACE_RETRY_SECONDS)
            if more and (placed or create):
                rechecks.append(AGAIN_NOW)
            changed = True if (placed or create) else changed

        status_changed, recheck_in, failure = _update_status(
            deployment, list(rows.values()), states, rollout, revision, now
        )
        changed |= status_changed
        rechecks.append(recheck_in)
        if failure is not None:
            _on_rollout_failure(deployment, failure, now)
        if deployment.is_deleting and not rows:
            deployment.delete()
            changed = True
        elapsed = time.monotonic() - started
        if elapsed >= SLOW_PASS_SECONDS:
            log.info(
                "pass over deployment %s took %.1f s: %d replica(s), %d created, placed onto %d node(s)",
                deployment, elapsed, len(rows), create, len(placed),
            )  # fmt: skip

        if touched_nodes and effects is None:
            transaction.on_commit(lambda: dispatch_nodes(touched_nodes))
        elif touched_nodes:
            transaction.on_commit(lambda: effects.nodes.update(touched_nodes))
        if changed and effects is None:
            transaction.on_commit(lambda: notify_deployments([pk]))
        elif changed:
            transaction.on_commit(lambda: effects.deployments.add(pk))
    # Anything further away than the periodic resync is left to it: no long-held timers.
    due = [
        seconds for seconds in rechecks if seconds is not None and seconds <= settings.RESYNC_INTERVAL_SECONDS
    ]
    return min(due) if due else None


# One statement marks many replicas Terminating, locking them in id order as the agents'
# reports do (orchestrator/controllers/node_reports.py), so the two never deadlock. Built
# from the model's constants only: no input reaches the text.
_MARK_TERMINATING = (
    f"WITH locked AS MATERIALIZED (SELECT id FROM {Replica._meta.db_table} "  # noqa: S608
    "WHERE id = ANY(%s) ORDER BY id FOR UPDATE) "
    f"UPDATE {Replica._meta.db_table} AS r SET phase = %s, ready = false, message = v.message, "
    "updated_at = %s FROM locked, unnest(%s::bigint[], %s::text[]) AS v(id, message) "
    "WHERE r.id = locked.id AND r.id = v.id"
)


def _mark_terminating(replicas: list[Replica], now) -> None:
    """Write what the pass set on these replicas (Terminating, not ready, why) in one
    statement: a deployment deleted or scaled down by thousands took one UPDATE each (the
    scheduler's largest cost when a 10,000-replica round was deleted). Also for replicas
    evicted by a NoExecute taint or replaced after their node was lost."""
    if not replicas:
        return
    for replica in replicas:
        replica.updated_at = now
    pks = [r.pk for r in replicas]
    with connection.cursor() as cursor:
        cursor.execute(
            _MARK_TERMINATING, [pks, Replica.Phase.TERMINATING, now, pks, [r.message for r in replicas]]
        )


def _nodes_of(replicas) -> dict[int, dict]:
    """What the controller needs to know about the nodes its replicas are on."""
    node_ids = {r.node_id for r in replicas if r.node_id is not None}
    if not node_ids:
        return {}
    return {
        row["pk"]: row
        for row in Node.objects.filter(pk__in=node_ids).values(
            "pk", "name", "taints", "status", "status_changed_at", "drain_started_at"
        )
    }


def _replica_states(deployment, replicas, nodes: dict, now) -> tuple[list[ReplicaState], float | None]:
    """The plan's view of each replica; also when the next one becomes available."""
    states, recheck_in = [], None
    for r in replicas:
        node = nodes.get(r.node_id)
        available = r.is_available(now, deployment.min_ready_seconds)
        if r.is_ready and not available and r.ready_since is not None:
            due = deployment.min_ready_seconds - (now - r.ready_since).total_seconds()
            recheck_in = due if recheck_in is None else min(recheck_in, due)
        states.append(
            ReplicaState(
                r.name,
                r.revision,
                r.phase,
                r.node_id,
                r.created_at,
                available=available,
                draining=bool(node and node["drain_started_at"] is not None),
                lost=bool(node and node["status"] != Node.Status.READY),
            )
        )
    return states, recheck_in


def _replace_lost(deployment, rows: dict[str, Replica], nodes: dict, now) -> tuple[list[str], float | None]:
    """Replicas on a node that stopped reporting wait `node_loss_toleration_seconds`, then
    are marked Terminating so the plan replaces them elsewhere. The row stays until the
    node comes back and confirms the container is gone: it is never listed in the node's
    desired set again, so its agent stops it on reconnect (fencing)."""
    replaced, recheck_in = [], None
    tolerate = deployment.node_loss_toleration_seconds
    disruption: str | None = None  # read once, when a replacement is due
    paused = 0
    for replica in rows.values():
        node = nodes.get(replica.node_id)
        if replica.phase != Replica.Phase.UNKNOWN or node is None or node["status"] == Node.Status.READY:
            continue
        remaining = tolerate - (now - node["status_changed_at"]).total_seconds()
        if remaining > 0:
            recheck_in = remaining if recheck_in is None else min(recheck_in, remaining)
            continue
        if disruption is None:
            disruption = mass_disruption(now) or ""
        if disruption and now - node["status_changed_at"] < DISRUPTION_WINDOW:
            recheck_in = min(recheck_in or DISRUPTION_RECHECK_SECONDS, DISRUPTION_RECHECK_SECONDS)
            if replica.message != PAUSED_MESSAGE:
                replica.message = PAUSED_MESSAGE
                replica.save(update_fields=["message", "updated_at"])
                paused += 1
            continue
        replica.phase = Replica.Phase.TERMINATING
        replica.ready = False
        replica.message = (
            f"node {node['name']} lost for {tolerate} s: replaced elsewhere; stopped there when it returns"
        )
        record_event(replica, "NodeLost", replica.message, warning=True, now=now)
        replaced.append(replica.name)
    _mark_terminating([rows[name] for name in replaced], now)
    if paused:
        message = f"{paused} replica(s) on lost nodes wait: {disruption}"
        record_event(deployment, "ReplacementPaused", message, warning=True, now=now)
    return replaced, recheck_in


# Kubernetes' node lifecycle controller stops evicting when most of a large zone is NotReady
# at once (--unhealthy-zone-threshold 0.55, --large-cluster-size-threshold 50): that many
# servers failing together is far less likely than the control plane or its network
# failing, and moving all their replicas would pile the work onto the few nodes left (and,
# on an overloaded control plane, make the next heartbeats later still: a cascade). Only
# nodes lost within DISRUPTION_WINDOW count (one long gone is not part of an outage), and
# no replica waits longer than that after its node was lost.
DISRUPTION_SHARE = 0.55
DISRUPTION_MIN_NODES = 50
DISRUPTION_WINDOW = timedelta(minutes=5)
DISRUPTION_RECHECK_SECONDS = 5.0
PAUSED_MESSAGE = (
    "replacement paused: most nodes turned NotReady at once, which points at the control plane "
    f"or the network rather than the servers; replaced once fewer than {DISRUPTION_SHARE:.0%} are, "
    f"or {DISRUPTION_WINDOW.total_seconds() / 60:g} min after the node was lost"
)


def mass_disruption(now) -> str | None:
    """Why replicas of recently lost nodes are not to be replaced now (most of a large fleet
    turned NotReady within DISRUPTION_WINDOW), or None."""
    counts = Node.objects.aggregate(
        ready=Count("pk", filter=Q(status=Node.Status.READY)),
        lost=Count(
            "pk", filter=Q(status=Node.Status.NOT_READY, status_changed_at__gte=now - DISRUPTION_WINDOW)
        ),
    )
    total, lost = counts["ready"] + counts["lost"], counts["lost"]
    if total < DISRUPTION_MIN_NODES or lost < DISRUPTION_SHARE * total:
        return None
    return (
        f"replacement paused: {lost} of {total} nodes turned NotReady in the last "
        f"{DISRUPTION_WINDOW.total_seconds() / 60:g} min (at least {DISRUPTION_SHARE:.0%})"
    )


def _evict(spec, rows: dict[str, Replica], nodes: dict, now) -> tuple[list[str], float | None]:
    """Replicas on nodes with a NoExecute taint they do not tolerate (or tolerate for a
    time that has run out) are stopped there; the plan then replaces them elsewhere."""
    tainted = {
        pk: (node["name"], node["taints"])
        for pk, node in nodes.items()
        if any(t.get("effect") == "NoExecute" for t in node["taints"])
    }
    if not tainted:
        return [], None
    evicted, recheck_in = [], None
    for replica in rows.values():
        if replica.node_id not in tainted or replica.phase not in Replica.ACTIVE:
            continue
        node_name, taints = tainted[replica.node_id]
        for data in taints:
            if data.get("effect") != "NoExecute":
                continue
            taint = Taint(data["key"], data.get("value") or "", "NoExecute")
            tolerations = [t for t in spec.tolerations if t.tolerates(taint)]
            if tolerations and all(t.seconds is None for t in tolerations):
                continue  # tolerated for good
            if tolerations:
                added = parse_datetime(data.get("time_added") or "") or now
                seconds = max(t.seconds for t in tolerations if t.seconds is not None)
                remaining = seconds - (now - added).total_seconds()
                if remaining > 0:
                    recheck_in = remaining if recheck_in is None else min(recheck_in, remaining)
                    continue
            replica.phase = Replica.Phase.TERMINATING
            replica.ready = False
            replica.message = f"evicted: node {node_name} has taint {taint}"
            record_event(replica, "Evicted", replica.message, warning=True, now=now)
            evicted.append(replica.name)
            break
    _mark_terminating([rows[name] for name in evicted], now)
    return evicted, recheck_in


# Kubernetes' ReplicaSet controller creates at most 500 pods per sync ("burstReplicas"):
# a deployment of thousands placed in one pass held its lock and thousands of nodes' locks
# for seconds, and sent thousands of nodes their sets at once, a burst that starved
# heartbeats. Passes of at most this many replicas follow one another instead, interleaved
# with other deployments' passes.
BURST_REPLICAS = 500
# A pass's "next pass due in" meaning: at once (it stopped at BURST_REPLICAS).
AGAIN_NOW = 0.0
MAX_PLACEMENT_ROUNDS = 5
# Replicas left waiting only because other schedulers won their nodes go again this soon.
RACE_RETRY_SECONDS = 0.05


def _place(
    deployment, spec, revision, template, waiting: list[Replica], create: int, rows: dict, now
) -> tuple[set[int], bool]:
    """Place the waiting replicas and `create` new ones (of `revision`, running `template`).
    Each round schedules against a fresh snapshot and commits optimistically; the winners
    are written before the next round, so its snapshot counts them. Returns the nodes
    placed on, and whether replicas are left waiting because other schedulers kept
    winning their nodes (not for want of room): then another pass is due at once."""
    taken = set(rows)  # names of this deployment's replicas; others are checked when drawn
    placed_on: set[int] = set()
    committed: dict[int, NodeInfo] = {}  # node id -> the node as this pass leaves it
    reason = "placement lost to concurrent schedulers; retrying"
    raced = False
    for _ in range(MAX_PLACEMENT_ROUNDS):
        wanted = len(waiting) + create
        if not wanted:
            break
        # Where this deployment's replicas are, from the pass's own rows (all of them, as
        # the pass read them, with what it placed since): no query. One a report deleted
        # meanwhile (its container gone) still counts: the safe side, and the report asks
        # for another pass.
        placed = Counter(r.node_id for r in rows.values() if r.node_id is not None)
        snapshot = take_snapshot(deployment.pk, cached=True, placed=placed)
        result = None
        try:
            result = schedule(spec, wanted, snapshot)
        finally:
            # schedule() counted its picks into the cached nodes: read them again next
            # time, unless they are adopted as they are once this transaction commits.
            forget_nodes(None if result is None else set(result.nodes))
        by_id = result.nodes
        won = claim_nodes(
            {node_id: node.resource_version for node_id, node in by_id.items()}, holding=bool(committed)
        )
        for node_id in won:
            by_id[node_id].resource_version += 1  # as claim_nodes left it
            committed[node_id] = by_id[node_id]
        node_ids = [node_id for node_id in result.node_ids if node_id in won]
        placed_on |= won
        raced = len(won) < len(by_id)
        if raced:
            rescan_nodes()  # others are placing too: read the versions that moved again
        reason = result.reason or reason
        assigned, node_ids = waiting[: len(node_ids)], node_ids
        for replica, node_id in zip(assigned, node_ids, strict=False):
            replica.node_id, replica.scheduled_at, replica.message = node_id, now, ""
            replica.updated_at = now  # bulk_update does not touch auto_now fields
        if assigned:
            Replica.objects.bulk_update(assigned, ["node", "scheduled_at", "message", "updated_at"])
        waiting = waiting[len(assigned) :]
        fresh = node_ids[len(assigned) :]
        if fresh:
            created = _insert_new(deployment, revision, template, fresh, now, taken)
            rows.update({r.name: r for r in created})
            create -= len(created)
        if len(result.node_ids) == len(node_ids) and result.unplaced:
            break  # everything that could be placed was; the rest has nowhere to go
    if committed:
        adopt = list(committed.values())
        transaction.on_commit(lambda: adopt_nodes(adopt))
    if create:
        created = _insert_new(deployment, revision, template, [None] * create, now, taken, reason)
        rows.update({r.name: r for r in created})
    stale = [r for r in waiting if r.message != reason]
    for replica in stale:
        replica.message, replica.updated_at = reason, now
    if stale:
        Replica.objects.bulk_update(stale, ["message", "updated_at"])
    pending = len(waiting) + create
    if stale or create:  # something new to say: more replicas waiting, or a new reason
        message = f"{pending} replica(s) pending: {reason}"
        record_event(deployment, "FailedScheduling", message, warning=True, now=now)
    return placed_on, raced and pending > 0


# What differs between the replicas one _place call creates (all else is shared: see
# orchestrator.bulk_insert).
_NEW_REPLICA_VARYING = ("uid", "name", "node")
# A new replica whose name another replica in the namespace holds is not inserted; "name"
# tells the inserted ones apart.
_NAME_CONFLICT = ("replica_name_unique_in_namespace", "name")


def _new_replica(deployment, revision, template, name, node_id, now, message="") -> Replica:
    resources = template["resources"]
    return Replica(
        namespace=deployment.namespace,
        deployment=deployment,
        name=name,
        node_id=node_id,
        scheduled_at=now if node_id else None,
        message=message,
        revision=revision,
        template=template,
        cpu_request=resources["cpu_millis"] or 0,
        memory_request=resources["memory_bytes"] or 0,
        host_ports=sorted([list(p) for p in host_ports_of(template["ports"])]),
        created_at=now,
    )


_STATUS_FIELDS = (
    "observed_generation",
    "status_replicas",
    "ready_replicas",
    "available_replicas",
    "updated_replicas",
    "complete_revision",
    "progress_mark",
    "progress_at",
)


def _update_status(deployment: Deployment, replicas: list[Replica], states, rollout, revision: str, now):
    """Write the deployment's status. Returns (changed, recheck in seconds, failure): the
    failure is the Progressing message when the current rollout has just failed."""
    before = [getattr(deployment, f) for f in _STATUS_FIELDS] + [[dict(c) for c in deployment.conditions]]
    was_failed = (deployment.condition(Deployment.Condition.PROGRESSING) or {}).get("status") == "False"
    active = [r for r in replicas if r.is_active]
    by_name = {s.name: s for s in states}

    # Replicas created in this pass have no state yet: not available, not draining.
    def is_available(r):
        return r.name in by_name and by_name[r.name].available

    def is_draining(r):
        return r.name in by_name and by_name[r.name].draining

    current = [r for r in active if r.revision == revision and not is_draining(r)]
    available = sum(1 for r in active if is_available(r))
    deployment.observed_generation = deployment.generation
    deployment.status_replicas = len(active)
    deployment.ready_replicas = sum(1 for r in active if r.is_ready)
    deployment.available_replicas = available
    deployment.updated_replicas = len(current)
    minimum = (
        max(0, deployment.replicas - rollout.max_unavailable)
        if rollout.type == "RollingUpdate"
        else deployment.replicas
    )
    ok = available >= minimum
    deployment.set_condition(
        Deployment.Condition.AVAILABLE,
        ok,
        "MinimumReplicasAvailable" if ok else "MinimumReplicasUnavailable",
        f"{available} of {deployment.replicas} replica(s) available (at least {minimum} required)",
        now,
    )
    unplaced = [r for r in active if r.node_id is None]
    crashing = next(
        (
            r
            for r in current
            if not r.is_ready
            and (
                r.restart_count >= CRASH_LOOP_RESTARTS
                or (r.phase == Replica.Phase.FAILED and deployment.restart_policy == "never")
            )
        ),
        None,
    )
    counts = RolloutCounts(
        desired=deployment.replicas,
        revision=deployment.current_revision,
        current=len(current),
        current_available=sum(1 for r in current if is_available(r)),
        old=len(active) - len(current),
        unplaced=len(unplaced),
        unplaced_reason=unplaced[0].message if unplaced else "",
        crash_looping=f"{crashing.name}: {crashing.message or crashing.phase}" if crashing else "",
    )
    verdict = assess(
        counts,
        paused=deployment.paused,
        deadline_seconds=deployment.progress_deadline_seconds,
        last_mark=deployment.progress_mark,
        last_progress_at=deployment.progress_at,
        now=now,
    )
    deployment.progress_mark, deployment.progress_at = verdict.mark, verdict.progress_at
    if verdict.reason == "NewReplicasAvailable":
        deployment.complete_revision = max(deployment.complete_revision, deployment.current_revision)
    deployment.set_condition(
        Deployment.Condition.PROGRESSING, verdict.status, verdict.reason, verdict.message, now
    )
    failed = [r for r in active if r.phase == Replica.Phase.FAILED]
    deployment.set_condition(
        Deployment.Condition.REPLICA_FAILURE,
        bool(failed),
        "ReplicaFailed" if failed else "NoFailures",
        f"{failed[0].name}: {failed[0].message}" if failed else "",
        now,
    )
    failure = verdict.message if verdict.failed and not was_failed else None
    after = [getattr(deployment, f) for f in _STATUS_FIELDS] + [deployment.conditions]
    if after == before:
        return False, verdict.recheck_in, failure
    deployment.save(update_fields=[*_STATUS_FIELDS, "conditions"])
    # progress_mark/progress_at alone moving is bookkeeping, not news for viewers
    return True, verdict.recheck_in, failure


def _on_rollout_failure(deployment: Deployment, message: str, now) -> None:
    """The current rollout just failed: say so, and roll back when the spec asks for it and
    the revision never completed (a deployment that ran fine and later crashes is not a
    failed rollout)."""
    record_event(
        deployment,
        "RolloutFailed",
        f"revision {deployment.current_revision}: {message}",
        warning=True,
        now=now,
    )
    if deployment.on_failure != "rollback" or deployment.complete_revision >= deployment.current_revision:
        return
    try:
        services.do_rollback_deployment(
            deployment, None, "berth", reason=f"revision {deployment.current_revision} failed"
        )
    except services.RollbackError as exc:
        record_event(deployment, "RollbackSkipped", str(exc), warning=True, now=now)
