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

from orchestrator.broadcast import notify_deployments
from orchestrator.controllers.plan import ReplicaState, compute_plan
from orchestrator.dispatch import dispatch_nodes
from orchestrator.events import record_event
from orchestrator.models import Deployment, Replica
from orchestrator.scheduling.placement import PlacementRequest, place_replicas
from orchestrator.scheduling.snapshot import host_ports_of, take_snapshot

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def _replica_name(deployment: Deployment, taken: set[str]) -> str:
    # Like Kubernetes: the deployment's name and a short random suffix, within 63 characters.
    base = deployment.name[:57]
    while True:
        name = f"{base}-{''.join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(5))}"
        if name not in taken:
            taken.add(name)
            return name


def reconcile_deployment(pk: int) -> None:
    now = timezone.now()
    touched_nodes: set[int] = set()
    with transaction.atomic():
        deployment = Deployment.objects.select_for_update().select_related("namespace").filter(pk=pk).first()
        if deployment is None:
            return
        rows = {r.name: r for r in deployment.replica_set.select_for_update().order_by("pk")}
        revision = deployment.revision()
        plan = compute_plan(
            deployment.replicas,
            revision,
            [ReplicaState(r.name, r.revision, r.phase, r.node_id, r.created_at) for r in rows.values()],
        )
        changed = not plan.is_empty

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
            taken = set(Replica.objects.filter(namespace=deployment.namespace).values_list("name", flat=True))
            template = deployment.template()
            created = Replica.objects.bulk_create(
                Replica(
                    namespace=deployment.namespace,
                    deployment=deployment,
                    name=_replica_name(deployment, taken),
                    revision=revision,
                    template=template,
                    created_at=now,
                )
                for _ in range(plan.create)
            )
            rows.update({r.name: r for r in created})
            record_event(deployment, "ScaledUp", f"created {plan.create} replica(s)", now=now)
        if plan.terminate or plan.delete:
            count = len(plan.terminate) + len(plan.delete)
            record_event(deployment, "ScaledDown", f"stopping {count} replica(s)", now=now)

        unplaced = [r for r in rows.values() if r.node_id is None and r.phase == Replica.Phase.PENDING]
        if unplaced:
            changed |= _place(deployment, unplaced, touched_nodes, now)

        changed |= _update_status(deployment, list(rows.values()), now)
        if deployment.is_deleting and not rows:
            deployment.delete()
            changed = True

        if touched_nodes:
            transaction.on_commit(lambda: dispatch_nodes(touched_nodes))
        if changed:
            transaction.on_commit(lambda: notify_deployments([pk]))


def _place(deployment: Deployment, unplaced: list[Replica], touched_nodes: set[int], now) -> bool:
    """Assign nodes to unscheduled replicas; the rest keep a message saying why not."""
    requests = [
        PlacementRequest(r.name, deployment.pk, host_ports_of(r.template.get("ports"))) for r in unplaced
    ]
    result = place_replicas(requests, take_snapshot())
    changed = False
    for replica in unplaced:
        node_id = result.assignments.get(replica.name)
        if node_id is not None:
            replica.node_id = node_id
            replica.scheduled_at = now
            replica.message = ""
            replica.save(update_fields=["node", "scheduled_at", "message", "updated_at"])
            touched_nodes.add(node_id)
            changed = True
        elif replica.message != result.unplaced[replica.name]:
            replica.message = result.unplaced[replica.name]
            replica.save(update_fields=["message", "updated_at"])
            record_event(replica, "FailedScheduling", replica.message, warning=True, now=now)
            changed = True
    return changed


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
