"""Recording events: repeated identical events fold into one row with a count."""

from datetime import timedelta

from django.db.models import F
from django.utils import timezone

from orchestrator.models import Event

# The same event within this window counts up instead of adding a row.
FOLD_WINDOW = timedelta(hours=1)


def record_event(obj, reason: str, message: str, *, warning: bool = False, actor: str = "", now=None) -> None:
    """Record that `reason` happened to `obj` (a Deployment, Replica or Node)."""
    now = now or timezone.now()
    kind = type(obj).__name__
    event_type = Event.Type.WARNING if warning else Event.Type.NORMAL
    namespace_id = getattr(obj, "namespace_id", None)
    folded = Event.objects.filter(
        kind=kind,
        object_uid=obj.uid,
        reason=reason,
        message=message,
        type=event_type,
        last_seen__gte=now - FOLD_WINDOW,
    ).update(count=F("count") + 1, last_seen=now)
    if not folded:
        Event.objects.create(
            kind=kind,
            namespace_id=namespace_id,
            name=obj.name,
            object_uid=obj.uid,
            type=event_type,
            reason=reason,
            message=message,
            first_seen=now,
            last_seen=now,
            actor=actor,
        )
