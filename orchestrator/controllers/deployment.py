"""The deployment controller.

`reconcile_deployment(pk)` reads a deployment's spec and all its replicas, decides with
the pure `compute_plan`, places unscheduled replicas with the scheduler seam, writes
status, and, after commit, sends the affected nodes their new desired sets.

Reads: the deployment, its replicas, the node snapshot. Writes: replicas (create,
Terminating, delete, node assignment), the deployment's status, events.
Safe to rerun: the deployment row is locked for the whole pass, and a pass over a
converged deployment decides nothing and writes nothing.
"""

import secrets
import string

from django.db import transaction
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from nodes.models import Node
from orchestrator.broadcast import notify_deployments
from orchestrator.controllers.plan import ReplicaState, compute_plan
from orchestrator.dispatch import dispatch_nodes
from orchestrator.events import record_event
from orchestrator.models import Deployment, Replica
from orchestrator.scheduling.commit import claim_nodes
from orchestrator.scheduling.model import Taint
from orchestrator.scheduling.placement import schedule
from orchestrator.scheduling.snapshot import take_snapshot
from orchestrator.scheduling.spec import host_ports_of, placement_spec

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def _replica_name(deployment: Deployment, taken: set[str]) -> str:
    # Like Kubernetes: the deployment's name and a short random suffix, within 63 characters.
    base = deployment.name[:57]
    while True:
        name = f"{base}-{''.join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))}"
        if name not in taken:
            taken.add(name)
            return name


def reconcile_deployment(pk: int) -> float | None:
    """One pass; returns in how many seconds another pass is due (a NoExecute toleration
    running out), or None."""
    now = timezone.now()
    touched_nodes: set[int] = set()
    with transaction.atomic():
        deployment = (
            Deployment.objects.select_for_update(of=("self",))
            .select_related("namespace")
            .filter(pk=pk)
            .first()
        )
        if deployment is None:
            return None
        rows = {r.name: r for r in deployment.replica_set.select_for_update().order_by("pk")}
        spec = placement_spec(deployment)
        evicted, recheck_in = _evict(spec, rows, now)
        touched_nodes.update(rows[name].node_id for name in evicted)
        revision = deployment.revision()
        plan = compute_plan(
            deployment.replicas,
            revision,
            [ReplicaState(r.name, r.revision, r.phase, r.node_id, r.created_at) for r in rows.values()],
        )
        changed = bool(evicted) or not plan.is_empty

        for name in plan.terminate:
            replica = rows[name]
            replica.phase = Replica.Phase.TERMINATING
            replica.message = "stopping: no longer wanted"
            replica.save(update_fields=["phase", "message", "updated_at"])
            touched_nodes.add(replica.node_id)
        if plan.delete:
            Replica.objects.filter(pk__in=[rows[n].pk for n in plan.delete]).delete()
            for name in plan.delete:
                del rows[name]
        if plan.create:
            record_event(deployment, "ScaledUp", f"created {plan.create} replica(s)", now=now)
        if plan.terminate or plan.delete:
            count = len(plan.terminate) + len(plan.delete)
            record_event(deployment, "ScaledDown", f"stopping {count} replica(s)", now=now)

        waiting = [r for r in rows.values() if r.node_id is None and r.phase == Replica.Phase.PENDING]
        if waiting or plan.create:
            placed = _place(deployment, spec, revision, waiting, plan.create, rows, now)
            touched_nodes |= placed
            changed = True if (placed or plan.create) else changed

        changed |= _update_status(deployment, list(rows.values()), now)
        if deployment.is_deleting and not rows:
            deployment.delete()
            changed = True

        if touched_nodes:
            transaction.on_commit(lambda: dispatch_nodes(touched_nodes))
        if changed:
            transaction.on_commit(lambda: notify_deployments([pk]))
    return recheck_in


def _evict(spec, rows: dict[str, Replica], now) -> tuple[list[str], float | None]:
    """Replicas on nodes with a NoExecute taint they do not tolerate (or tolerate for a
    time that has run out) are stopped there; the plan then replaces them elsewhere."""
    on_nodes = {r.node_id for r in rows.values() if r.node_id and r.phase in Replica.ACTIVE}
    if not on_nodes:
        return [], None
    tainted = {
        pk: (name, taints)
        for pk, name, taints in Node.objects.filter(pk__in=on_nodes).values_list("pk", "name", "taints")
        if any(t.get("effect") == "NoExecute" for t in taints)
    }
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
            replica.message = f"evicted: node {node_name} has taint {taint}"
            replica.save(update_fields=["phase", "message", "updated_at"])
            record_event(replica, "Evicted", replica.message, warning=True, now=now)
            evicted.append(replica.name)
            break
    return evicted, recheck_in


MAX_PLACEMENT_ROUNDS = 5


def _place(deployment, spec, revision, waiting: list[Replica], create: int, rows: dict, now) -> set[int]:
    """Place the waiting replicas and `create` new ones. Each round schedules against a
    fresh snapshot and commits optimistically; the winners are written before the next
    round, so its snapshot counts them. Returns the nodes placed on."""
    template = deployment.template()
    taken = set(Replica.objects.filter(namespace=deployment.namespace).values_list("name", flat=True))
    placed_on: set[int] = set()
    reason = "placement lost to concurrent schedulers; retrying"
    for _ in range(MAX_PLACEMENT_ROUNDS):
        wanted = len(waiting) + create
        if not wanted:
            break
        snapshot = take_snapshot(deployment.pk)
        read = {node.id: node.resource_version for node in snapshot}
        result = schedule(spec, wanted, snapshot)
        won = claim_nodes({node_id: read[node_id] for node_id in set(result.node_ids)})
        node_ids = [node_id for node_id in result.node_ids if node_id in won]
        placed_on |= won
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
            created = Replica.objects.bulk_create(
                _new_replica(deployment, revision, template, _replica_name(deployment, taken), node_id, now)
                for node_id in fresh
            )
            rows.update({r.name: r for r in created})
            create -= len(created)
        if len(result.node_ids) == len(node_ids) and result.unplaced:
            break  # everything that could be placed was; the rest has nowhere to go
    if create:
        created = Replica.objects.bulk_create(
            _new_replica(deployment, revision, template, _replica_name(deployment, taken), None, now, reason)
            for _ in range(create)
        )
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
    return placed_on


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


def _update_status(deployment: Deployment, replicas: list[Replica], now) -> bool:
    """Write the deployment's status; True when anything in it changed."""
    before = (
        deployment.observed_generation,
        deployment.status_replicas,
        deployment.ready_replicas,
        deployment.available_replicas,
        [dict(c) for c in deployment.conditions],
    )
    active = [r for r in replicas if r.is_active]
    ready = sum(1 for r in active if r.is_ready)
    deployment.observed_generation = deployment.generation
    deployment.status_replicas = len(active)
    deployment.ready_replicas = ready
    deployment.available_replicas = ready
    available = ready >= deployment.replicas
    deployment.set_condition(
        Deployment.Condition.AVAILABLE,
        available,
        "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
        f"{ready} of {deployment.replicas} replica(s) ready",
        now,
    )
    revision = deployment.revision()
    up_to_date = sum(1 for r in active if r.revision == revision)
    complete = up_to_date == deployment.replicas == len(active) and available
    unplaced = [r for r in active if r.node_id is None]
    if complete:
        progress = (True, "NewReplicasAvailable", "all replicas run the current spec")
    elif unplaced:
        progress = (True, "ReplicasPending", f"{len(unplaced)} replica(s) waiting: {unplaced[0].message}")
    else:
        progress = (True, "ReplicasUpdating", f"{up_to_date} of {deployment.replicas} replica(s) up to date")
    deployment.set_condition(Deployment.Condition.PROGRESSING, *progress, now)
    failed = [r for r in active if r.phase == Replica.Phase.FAILED]
    deployment.set_condition(
        Deployment.Condition.REPLICA_FAILURE,
        bool(failed),
        "ReplicaFailed" if failed else "NoFailures",
        f"{failed[0].name}: {failed[0].message}" if failed else "",
        now,
    )
    after = (
        deployment.observed_generation,
        deployment.status_replicas,
        deployment.ready_replicas,
        deployment.available_replicas,
        deployment.conditions,
    )
    if after == before:
        return False
    deployment.save(
        update_fields=[
            "observed_generation",
            "status_replicas",
            "ready_replicas",
            "available_replicas",
            "conditions",
        ]
    )
    return True
