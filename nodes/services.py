"""Mutations of nodes and join tokens; every entry point (API, dashboard, commands) calls these."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from nodes import heartbeats
from nodes.labels import NO_EXECUTE, format_taint
from nodes.models import JoinToken, Node
from nodes.sessions import place_waiting_replicas, reconcile_deployments
from nodes.tokens import JOIN_PREFIX, NODE_PREFIX, display_prefix, hash_token, new_token
from orchestrator.broadcast import notify_cluster
from orchestrator.events import record_event
from orchestrator.models import Replica
from orchestrator.quantities import format_cpu, format_memory

# What a user may change on a node; all of it is read by placement.
NODE_SPEC_FIELDS = ("user_labels", "taints", "unschedulable", "reserved_cpu", "reserved_memory")


class EnrollmentRefused(Exception):
    """The join token is unknown, expired or revoked."""


def do_create_join_token(
    actor, ttl_seconds: float | None = None, description: str = ""
) -> tuple[JoinToken, str]:
    """A new join token; the clear token is returned once and never stored."""
    ttl = ttl_seconds if ttl_seconds is not None else settings.JOIN_TOKEN_TTL_SECONDS
    clear, digest = new_token(JOIN_PREFIX)
    token = JoinToken.objects.create(
        token_hash=digest,
        prefix=display_prefix(clear),
        description=description,
        created_by=actor if getattr(actor, "pk", None) else None,
        expires_at=timezone.now() + timedelta(seconds=ttl),
    )
    return token, clear


def do_revoke_join_token(token: JoinToken, actor) -> None:
    JoinToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())


def do_enroll_node(join_token: str, name: str, labels: dict) -> tuple[Node, str]:
    """Exchange a join token for a node credential (shown once). Enrolling an existing
    name rotates its credential: the old agent's credential stops working.

    The token's row is locked only by the transaction's last statement, which counts the
    use and checks again that the token is still usable: a fleet enrolling with one token
    queues on that lock for a commit each, not for a whole enrollment (locked first, each
    enrollment held a database connection while it waited its turn, and a web process ran
    out of them for everything else). A revocation that commits first still refuses the
    enrollment, which then leaves nothing behind."""
    now = timezone.now()
    refused = EnrollmentRefused(
        "join token is unknown, expired or revoked: create a new one with "
        "'manage.py join_token' or POST /api/v1/join-tokens/"
    )
    with transaction.atomic():
        token = (
            JoinToken.objects.filter(token_hash=hash_token(join_token or ""))
            .only("pk", "prefix", "revoked_at", "expires_at")
            .first()
        )
        if token is None or not token.is_usable(now):
            raise refused
        clear, digest = new_token(NODE_PREFIX)
        node, created = Node.objects.select_for_update().get_or_create(name=name)
        node.credential_hash = digest
        node.agent_labels = labels
        node.session = None
        node.save()
        record_event(
            node,
            "Enrolled" if created else "Reenrolled",
            f"enrolled with join token {token.prefix}…",
            now=now,
        )
        counted = JoinToken.objects.filter(pk=token.pk, revoked_at__isnull=True, expires_at__gt=now).update(
            use_count=F("use_count") + 1, last_used_at=now
        )
        if not counted:  # revoked (or expired) since it was read: undo all of it
            raise refused
    return node, clear


def authenticate_node(credential: str) -> Node | None:
    if not credential or not credential.startswith(NODE_PREFIX):
        return None
    return Node.objects.filter(credential_hash=hash_token(credential)).first()


def node_ids_by_credential() -> dict[str, int]:
    """Every node's id by the hash of its credential (web/consumers/admission.py)."""
    nodes = Node.objects.filter(credential_hash__isnull=False).exclude(credential_hash="").order_by()
    return dict(nodes.values_list("credential_hash", "pk"))


class NodeNotRemovable(Exception):
    """The node is Ready: removing it would strand replicas its agent still runs."""


def _actor_name(actor) -> str:
    return getattr(actor, "username", "") or str(actor or "")


def _describe_labels(old: dict, new: dict) -> str:
    parts = [f"added {k}={new[k]}" for k in sorted(new.keys() - old.keys())]
    parts += [f"changed {k}={old[k]}→{new[k]}" for k in sorted(new.keys() & old.keys()) if old[k] != new[k]]
    parts += [f"removed {k}" for k in sorted(old.keys() - new.keys())]
    return "user labels " + "; ".join(parts)


def _taint_set(taints: list[dict]) -> set[tuple[str, str, str]]:
    return {(t["key"], t.get("value") or "", t["effect"]) for t in taints}


def _describe_taints(added: set, removed: set) -> str:
    def show(items):
        return ", ".join(format_taint({"key": k, "value": v, "effect": e}) for k, v, e in sorted(items))

    parts = ([f"added {show(added)}"] if added else []) + ([f"removed {show(removed)}"] if removed else [])
    return "taints " + "; ".join(parts)


def _stamped_taints(taints: list[dict], previous: list[dict], now) -> list[dict]:
    """The taints to store: NoExecute ones carry when they were added (a toleration's
    `toleration_seconds` counts from then), kept for a taint that was already there."""
    added_at = {(t["key"], t.get("value") or "", t["effect"]): t.get("time_added") for t in previous}
    stored = []
    for taint in taints:
        entry = {"key": taint["key"], "value": taint.get("value") or "", "effect": taint["effect"]}
        if entry["effect"] == NO_EXECUTE:
            entry["time_added"] = added_at.get((entry["key"], entry["value"], NO_EXECUTE)) or now.isoformat()
        stored.append(entry)
    return stored


def do_update_node(node: Node, changes: dict, actor) -> Node:
    """Apply validated changes to what a user sets on a node (NODE_SPEC_FIELDS:
    user_labels, taints, unschedulable, reserved_cpu, reserved_memory).

    One transaction holding the node row. Anything changed bumps `resource_version`
    (placement reads all of it, and schedulers commit only against the version they
    read) and records an event per kind of change. After commit: deployments waiting for
    room get a placement pass if the change can make room (uncordoned, labels changed,
    a taint removed, less reserved); deployments with replicas on the node are
    reconciled if a NoExecute taint appeared (their controller evicts); browsers are told.
    Unchanged values change nothing, not even the version.
    """
    actor_name = _actor_name(actor)
    now = timezone.now()
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        locked_old_taints = list(locked.taints)
        changed = [f for f in NODE_SPEC_FIELDS if f in changes and getattr(locked, f) != changes[f]]
        old_taints = _taint_set(locked.taints)
        new_taints = _taint_set(changes["taints"]) if "taints" in changed else old_taints
        if "taints" in changed and new_taints == old_taints:
            changed.remove("taints")  # the same taints in another order
        if not changed:
            return locked
        events: list[tuple[str, str]] = []
        makes_room = False
        if "unschedulable" in changed:
            if changes["unschedulable"]:
                events.append(("Cordoned", "cordoned: no new replicas are placed here"))
            else:
                events.append(("Uncordoned", "uncordoned: replicas may be placed here again"))
                makes_room = True
                if locked.drain_started_at is not None:
                    locked.drain_started_at = None
                    changed.append("drain_started_at")
        if "user_labels" in changed:
            events.append(("LabelsChanged", _describe_labels(locked.user_labels, changes["user_labels"])))
            makes_room = True
        added, removed = new_taints - old_taints, old_taints - new_taints
        if "taints" in changed:
            events.append(("TaintsChanged", _describe_taints(added, removed)))
            makes_room |= bool(removed)
        reserved_parts = []
        if "reserved_cpu" in changed:
            reserved_parts.append(
                f"cpu {format_cpu(locked.reserved_cpu)}→{format_cpu(changes['reserved_cpu'])}"
            )
            makes_room |= changes["reserved_cpu"] < locked.reserved_cpu
        if "reserved_memory" in changed:
            reserved_parts.append(
                f"memory {format_memory(locked.reserved_memory)}→{format_memory(changes['reserved_memory'])}"
            )
            makes_room |= changes["reserved_memory"] < locked.reserved_memory
        if reserved_parts:
            events.append(("ReservedChanged", "reserved " + ", ".join(reserved_parts)))

        for field in changed:
            if field in changes:
                setattr(locked, field, changes[field])
        if "taints" in changed:
            locked.taints = _stamped_taints(changes["taints"], locked_old_taints, now)
        locked.resource_version += 1
        locked.save(update_fields=[*changed, "resource_version"])
        for reason, message in events:
            record_event(locked, reason, message, actor=actor_name, now=now)

        if makes_room:
            transaction.on_commit(place_waiting_replicas)
        if any(effect == NO_EXECUTE for _, _, effect in added):
            on_node = set(
                Replica.objects.filter(node=locked)
                .exclude(phase=Replica.Phase.TERMINATING)
                .values_list("deployment_id", flat=True)
            )
            transaction.on_commit(lambda: reconcile_deployments(on_node))
        transaction.on_commit(notify_cluster)
    return locked


def do_cordon_node(node: Node, actor) -> Node:
    return do_update_node(node, {"unschedulable": True}, actor)


def do_uncordon_node(node: Node, actor) -> Node:
    """Let replicas be placed on the node again; also ends a drain."""
    return do_update_node(node, {"unschedulable": False}, actor)


def do_drain_node(node: Node, actor) -> Node:
    """Cordon the node and move its replicas away.

    Each deployment with replicas here moves them as a rolling update would: a
    replacement is placed on another node first when `max_surge` allows, and replicas are
    stopped here only while `max_unavailable` holds (orchestrator/controllers/plan.py
    counts replicas on a draining node as old). The drain lasts until uncordon.
    """
    with transaction.atomic():
        locked = do_update_node(node, {"unschedulable": True}, actor)
        locked = Node.objects.select_for_update().get(pk=locked.pk)
        if locked.drain_started_at is None:
            locked.drain_started_at = timezone.now()
            locked.save(update_fields=["drain_started_at"])
            count = Replica.objects.filter(node=locked, phase__in=Replica.ACTIVE).count()
            record_event(
                locked,
                "Draining",
                f"draining: moving {count} replica(s) to other nodes",
                actor=_actor_name(actor),
            )
        on_node = set(
            Replica.objects.filter(node=locked, phase__in=Replica.ACTIVE).values_list(
                "deployment_id", flat=True
            )
        )
        transaction.on_commit(lambda: reconcile_deployments(on_node))
        transaction.on_commit(notify_cluster)
    return locked


def do_delete_node(node: Node, actor) -> None:
    """Forget a NotReady node (a server taken away for good).

    Its replicas lose their node (the foreign key is SET NULL) and go back to Pending,
    so their deployments place them again elsewhere; those deployments are reconciled
    after commit. The node's credential goes with its row: its agent, should it come
    back, is refused and has to enroll again. Raises NodeNotRemovable for a Ready node.
    """
    with transaction.atomic():
        locked = Node.objects.select_for_update().get(pk=node.pk)
        if locked.is_ready:
            raise NodeNotRemovable(
                f"node {locked.name} is Ready: stop its agent (or drain it and stop the agent) "
                "first; only a NotReady node can be removed"
            )
        on_node = Replica.objects.filter(node=locked)
        affected = set(on_node.values_list("deployment_id", flat=True))
        on_node.filter(phase__in=Replica.ACTIVE).update(
            phase=Replica.Phase.PENDING,
            message=f"node {locked.name} was removed; waiting to be placed again",
            container_id="",
            scheduled_at=None,
            started_at=None,
            updated_at=timezone.now(),
        )
        record_event(
            locked,
            "Removed",
            f"node removed; {len(affected)} deployment(s) had replicas on it",
            actor=_actor_name(actor),
        )
        node_id = locked.pk
        locked.delete()  # replicas: node SET NULL
        transaction.on_commit(lambda: heartbeats.forget(node_id))
        transaction.on_commit(lambda: reconcile_deployments(affected))
        transaction.on_commit(notify_cluster)
