"""Every change a user makes to deployments goes through one function here.

Each runs in one transaction, records an event, and enqueues the deployment's
reconcile only once the transaction has committed, so a worker never sees a
half-written spec. The API, the dashboard and management commands all call these.
"""

from django.db import transaction
from django.utils import timezone

from orchestrator.events import record_event
from orchestrator.models import Deployment, Namespace

SPEC_FIELDS = (
    "image",
    "command",
    "env",
    "ports",
    "cpu_request",
    "memory_request",
    "replicas",
    "strategy",
    "node_selector",
    "affinity",
    "tolerations",
    "topology_spread",
    "max_per_node",
)


def _actor_name(actor) -> str:
    return getattr(actor, "username", "") or str(actor or "")


def _enqueue_reconcile(deployment_id: int) -> None:
    from orchestrator.tasks import request_reconcile

    transaction.on_commit(lambda: request_reconcile(deployment_id))


def do_create_deployment(namespace: Namespace, spec: dict, actor) -> Deployment:
    """Create a deployment from a validated spec (name plus SPEC_FIELDS)."""
    with transaction.atomic():
        deployment = Deployment.objects.create(
            namespace=namespace, name=spec["name"], **{f: spec[f] for f in SPEC_FIELDS if f in spec}
        )
        record_event(
            deployment,
            "Created",
            f"created with image {deployment.image} and {deployment.replicas} replica(s)",
            actor=_actor_name(actor),
        )
        _enqueue_reconcile(deployment.pk)
    return deployment


def do_update_deployment(deployment: Deployment, changes: dict, actor) -> Deployment:
    """Apply validated spec changes; the generation moves only when something changed."""
    with transaction.atomic():
        locked = Deployment.live.select_for_update().get(pk=deployment.pk)
        changed = [f for f in SPEC_FIELDS if f in changes and getattr(locked, f) != changes[f]]
        if not changed:
            return locked
        old_replicas = locked.replicas
        for field in changed:
            setattr(locked, field, changes[field])
        locked.generation += 1
        locked.save(update_fields=[*changed, "generation", "updated_at"])
        if changed == ["replicas"]:
            message = f"scaled from {old_replicas} to {locked.replicas} replica(s)"
            reason = "Scaled"
        else:
            message = "spec changed: " + ", ".join(changed)
            reason = "Updated"
        record_event(locked, reason, message, actor=_actor_name(actor))
        _enqueue_reconcile(locked.pk)
    return locked


def do_scale_deployment(deployment: Deployment, replicas: int, actor) -> Deployment:
    return do_update_deployment(deployment, {"replicas": replicas}, actor)


def do_delete_deployment(deployment: Deployment, actor) -> None:
    """Mark the deployment deleted: it vanishes from the API at once, its replicas are
    stopped by their agents, and the controller removes the row when none remain."""
    with transaction.atomic():
        locked = Deployment.live.select_for_update().get(pk=deployment.pk)
        locked.deleted_at = timezone.now()
        locked.replicas = 0
        locked.generation += 1
        locked.save(update_fields=["deleted_at", "replicas", "generation", "updated_at"])
        record_event(locked, "Deleted", "deleted; stopping its replicas", actor=_actor_name(actor))
        _enqueue_reconcile(locked.pk)
