"""Recording events: repeated identical events fold into one row with a count; events
not seen again for `settings.EVENT_TTL_SECONDS` are deleted (prune_events)."""

from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.utils import timezone

from orchestrator.models import Event

# The same event within this window counts up instead of adding a row.
FOLD_WINDOW = timedelta(hours=1)

_TABLE = Event._meta.db_table
# One round trip: count up the same event seen within the window, or add it. (Two calls
# at once may both add it: two rows for one event, never one lost.) Built from this
# module's constants only: no input reaches the text.
_RECORD = (
    f"WITH folded AS (UPDATE {_TABLE} SET count = count + 1, last_seen = %(now)s "  # noqa: S608
    "WHERE kind = %(kind)s AND object_uid = %(uid)s AND reason = %(reason)s AND message = %(message)s "
    "AND type = %(type)s AND last_seen >= %(since)s RETURNING id) "
    f"INSERT INTO {_TABLE} (kind, namespace_id, name, object_uid, type, reason, message, count, "
    "first_seen, last_seen, actor) "
    "SELECT %(kind)s, %(namespace)s, %(name)s, %(uid)s, %(type)s, %(reason)s, %(message)s, 1, "
    "%(now)s, %(now)s, %(actor)s WHERE NOT EXISTS (SELECT 1 FROM folded)"
)


def record_event(obj, reason: str, message: str, *, warning: bool = False, actor: str = "", now=None) -> None:
    """Record that `reason` happened to `obj` (a Deployment, Replica or Node)."""
    now = now or timezone.now()
    with connection.cursor() as cursor:
        cursor.execute(
            _RECORD,
            {
                "kind": type(obj).__name__,
                "namespace": getattr(obj, "namespace_id", None),
                "name": obj.name,
                "uid": obj.uid,
                "type": Event.Type.WARNING if warning else Event.Type.NORMAL,
                "reason": reason,
                "message": message,
                "actor": actor,
                "now": now,
                "since": now - FOLD_WINDOW,
            },
        )


# Rows deleted per statement: each DELETE holds its row locks briefly, so recording events
# (which may fold into a row being pruned) never waits long.
PRUNE_BATCH = 5000
_PRUNE = (
    f"DELETE FROM {_TABLE} WHERE id IN (SELECT id FROM {_TABLE} WHERE last_seen < %(cutoff)s "  # noqa: S608
    "LIMIT %(batch)s)"
)


def prune_events(*, now=None, ttl_seconds: float | None = None, batch: int = PRUNE_BATCH) -> int:
    """Delete the events last seen more than the TTL ago (Kubernetes' --event-ttl); return
    how many. An event that keeps happening keeps its row: folding moves its last_seen."""
    now = now or timezone.now()
    ttl = settings.EVENT_TTL_SECONDS if ttl_seconds is None else ttl_seconds
    params = {"cutoff": now - timedelta(seconds=ttl), "batch": batch}
    deleted = 0
    with connection.cursor() as cursor:
        while True:
            cursor.execute(_PRUNE, params)
            deleted += cursor.rowcount
            if cursor.rowcount < batch:
                return deleted
