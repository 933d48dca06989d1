"""Mutations of nodes and join tokens; every entry point (API, dashboard, commands) calls these."""

from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from nodes.models import JoinToken, Node
from nodes.tokens import JOIN_PREFIX, NODE_PREFIX, display_prefix, hash_token, new_token
from orchestrator.events import record_event


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
    name rotates its credential: the old agent's credential stops working."""
    now = timezone.now()
    with transaction.atomic():
        token = JoinToken.objects.select_for_update().filter(token_hash=hash_token(join_token or "")).first()
        if token is None or not token.is_usable(now):
            raise EnrollmentRefused(
                "join token is unknown, expired or revoked: create a new one with "
                "'manage.py join_token' or POST /api/v1/join-tokens/"
            )
        token.use_count += 1
        token.last_used_at = now
        token.save(update_fields=["use_count", "last_used_at"])
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
    return node, clear


def authenticate_node(credential: str) -> Node | None:
    if not credential or not credential.startswith(NODE_PREFIX):
        return None
    return Node.objects.filter(credential_hash=hash_token(credential)).first()
