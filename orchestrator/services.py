"""Every change a user makes to deployments goes through one function here.

Each runs in one transaction, records an event, and enqueues the deployment's
reconcile only once the transaction has committed, so a worker never sees a
half-written spec. The API, the dashboard and management commands all call these.
"""

from django.db import IntegrityError, transaction
from django.utils import timezone

from orchestrator.events import record_event
from orchestrator.models import Deployment, Namespace, Revision

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
    "restart_policy",
    "termination_grace_seconds",
    "readiness_probe",
    "liveness_probe",
    "update_strategy",
    "min_ready_seconds",
    "progress_deadline_seconds",
    "paused",
    "on_failure",
    "node_loss_toleration_seconds",
)


class RollbackError(ValueError):
    """A rollback that cannot be done; the message says why and what exists."""


def _actor_name(actor) -> str:
    return getattr(actor, "username", "") or str(actor or "")


def _enqueue_reconcile(deployment_id: int) -> None:
    from orchestrator.tasks import request_reconcile

    transaction.on_commit(lambda: request_reconcile(deployment_id))


class NameTaken(ValueError):
    """A live deployment of that name already exists in the namespace."""


_NAME_UNIQUE = "deployment_name_unique_in_namespace"


def do_create_deployment(namespace: Namespace, spec: dict, actor) -> Deployment:
    """Create a deployment from a validated spec (name plus SPEC_FIELDS). Raises NameTaken
    if the namespace has a live one of that name: the unique constraint decides, so two
    creates racing for a name get one deployment and one NameTaken, never an error 500."""
    try:
        with transaction.atomic():
            deployment = Deployment.objects.create(
                namespace=namespace,
                name=spec["name"],
                current_revision=1,  # the revision recorded below
                **{f: spec[f] for f in SPEC_FIELDS if f in spec},
            )
            record_event(
                deployment,
                "Created",
                f"created with image {deployment.image} and {deployment.replicas} replica(s)",
                actor=_actor_name(actor),
            )
            _add_revision(deployment, 1, "created", _actor_name(actor))
            _enqueue_reconcile(deployment.pk)
    except IntegrityError as exc:
        if getattr(getattr(exc.__cause__, "diag", None), "constraint_name", None) == _NAME_UNIQUE:
            raise NameTaken(
                f"a deployment named {spec['name']!r} already exists in namespace {namespace.name!r}"
            ) from None
        raise
    return deployment


def _add_revision(deployment: Deployment, number: int, cause: str, actor: str) -> Revision:
    return Revision.objects.create(
        deployment=deployment,
        number=number,
        hash=deployment.revision(),
        spec=deployment.template_spec(),
        change_cause=cause[:200],
        actor=actor,
    )


def _record_revision(deployment: Deployment, cause: str, actor: str) -> Revision:
    """Append the deployment's template as its next revision; prune the oldest beyond the
    history limit. The caller holds the deployment row."""
    last = deployment.revisions.order_by("-number").values_list("number", flat=True).first() or 0
    revision = _add_revision(deployment, last + 1, cause, actor)
    deployment.current_revision = revision.number
    deployment.save(update_fields=["current_revision"])
    keep = revision.number - Revision.HISTORY_LIMIT
    if keep > 0:
        deployment.revisions.filter(number__lte=keep).delete()
    return revision


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
        template_changed = [f for f in changed if f in Deployment.TEMPLATE_FIELDS]
        if template_changed:
            _record_revision(locked, "changed " + ", ".join(template_changed), _actor_name(actor))
        _enqueue_reconcile(locked.pk)
    return locked


def do_rollback_deployment(deployment: Deployment, revision: int | None, actor, reason: str = "") -> Revision:
    """Run an earlier revision's template again, as a new revision (a rolling update like
    any other). `revision=None` means the one before the current. Raises RollbackError."""
    with transaction.atomic():
        locked = Deployment.live.select_for_update().get(pk=deployment.pk)
        history = list(locked.revisions.order_by("-number"))
        current_hash = locked.revision()
        if revision is None:
            target = next(
                (r for r in history if r.number < locked.current_revision and r.hash != current_hash), None
            )
            if target is None:
                raise RollbackError("there is no earlier revision to roll back to")
        else:
            target = next((r for r in history if r.number == revision), None)
            if target is None:
                known = ", ".join(str(r.number) for r in reversed(history)) or "none"
                raise RollbackError(f"revision {revision} not found; this deployment has revisions {known}")
            if target.hash == current_hash:
                raise RollbackError(f"revision {revision} is what the deployment runs already")
        for field, value in target.spec.items():
            setattr(locked, field, value)
        locked.generation += 1
        locked.paused = False
        locked.save(update_fields=[*target.spec, "paused", "generation", "updated_at"])
        cause = f"rollback to revision {target.number}" + (f": {reason}" if reason else "")
        new = _record_revision(locked, cause, _actor_name(actor))
        record_event(
            locked,
            "RolledBack",
            f"rolled back to revision {target.number} (now revision {new.number})"
            + (f": {reason}" if reason else ""),
            warning=bool(reason),
            actor=_actor_name(actor),
        )
        _enqueue_reconcile(locked.pk)
    return new


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
