"""The node monitor: Ready nodes whose agent stopped heartbeating turn NotReady, and
NotReady nodes whose connected agent heartbeats again (it was frozen, or the network
hiccuped without closing the connection) turn Ready.

Reads: heartbeats from Redis, nodes from PostgreSQL. Writes: node status (and its
replicas' phase Unknown) on a transition, and a coarse `last_heartbeat`. Runs every
second or so from beat; a singleton through an advisory lock; a rerun finds nothing new.
"""

import logging
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, Q
from django.utils import timezone

from nodes import heartbeats
from nodes.models import Node
from nodes.sessions import GROUP_REFRESH_SECONDS, mark_node_lost
from orchestrator.dispatch import dispatch_nodes
from orchestrator.events import record_event
from orchestrator.locks import try_transaction_lock
from orchestrator.models import Replica

log = logging.getLogger(__name__)

# last_heartbeat in PostgreSQL is for people (and a fallback while Redis has no beat); a
# node's moves about every _COARSE: each pass writes the Redis beat of the nodes whose turn
# it is (their id modulo the passes in _COARSE), so a pass neither reads every node's
# timestamps nor writes more than a share of them: at 5,000 nodes, 170 rows a second.
_COARSE = timedelta(seconds=30)


def monitor_nodes(now: datetime | None = None) -> list[str]:
    """Mark nodes lost whose heartbeat is older than the grace; the names it marked lost.

    It reads without locking (thousands of nodes, every second: their ids, and the stored
    times only of those Redis has no recent beat for) and locks only the nodes it is about
    to mark, re-checking them under the lock, so schedulers committing placements onto
    nodes are never held up by it.
    """
    now = now or timezone.now()
    if heartbeats.receivers_silent(now.timestamp()):
        _say_receivers_silent(True)
        return []
    _say_receivers_silent(False)
    grace = timedelta(seconds=settings.NODE_GRACE_SECONDS)
    beats = heartbeats.read_all()  # node id -> Unix time
    knocks = heartbeats.read_knocks()  # agents heard at the door, not in session yet
    since, fresh = heartbeats.tracking_since(now.timestamp())
    if fresh:
        _after_redis_loss()
    # Nobody is silent for longer than heartbeats have been recorded: after Redis lost them,
    # a web process started, or web processes hear again after none did, a node not heard
    # since gets the rejoin allowance and a whole grace for its agent's next beat to arrive.
    tracked_from = datetime.fromtimestamp(since, tz=UTC)
    oldest_fine = now.timestamp() - grace.total_seconds()
    interval = settings.NODE_MONITOR_INTERVAL_SECONDS
    turns = max(1, round(_COARSE.total_seconds() / interval))
    turn = int(now.timestamp() / interval) % turns

    rejoining_until = tracked_from + timedelta(seconds=heartbeats.rejoin_allowance())

    def last_seen(pk, last_heartbeat, status_changed_at):
        beat, knock = beats.get(pk), knocks.get(pk)
        stored = [datetime.fromtimestamp(t, tz=UTC) if t else None for t in (beat, knock)]
        seen = max(max(filter(None, [*stored, last_heartbeat]), default=status_changed_at), tracked_from)
        if beat is None or beat < since:
            # No session beat since heartbeats were tracked afresh: its agent may still be on
            # its way back in, with the whole fleet (nodes/heartbeats.py rejoin_allowance).
            seen = max(seen, rejoining_until)
        return seen

    lost = []
    with transaction.atomic():
        if not try_transaction_lock("berth.node-monitor"):
            return lost
        ready = (
            Node.objects.filter(status=Node.Status.READY)
            .order_by()  # no use for the model's sort by name, every second
            .values_list("pk", ExpressionWrapper(Q(last_heartbeat__isnull=True), output_field=BooleanField()))
        )
        suspects, refresh = [], []
        for pk, never in ready:
            beat = max(beats.get(pk, 0.0), knocks.get(pk, 0.0)) or None
            if beat is None or beat < oldest_fine:
                suspects.append(pk)
            elif never or pk % turns == turn:
                refresh.append((pk, datetime.fromtimestamp(beat, tz=UTC)))
        silent = [
            pk
            for pk, last_heartbeat, status_changed_at in Node.objects.filter(pk__in=suspects)
            .order_by()
            .values_list("pk", "last_heartbeat", "status_changed_at")
            if now - last_seen(pk, last_heartbeat, status_changed_at) > grace
        ]
        if refresh:
            # One statement (bulk_update builds a CASE per row). Rows another transaction
            # holds (a scheduler's claim, a dispatch) are left for a later pass: waiting for
            # them, in no particular order, deadlocked with those who lock nodes in id order.
            ids = [pk for pk, _ in refresh]
            with connection.cursor() as cursor:
                cursor.execute(
                    "UPDATE nodes_node AS n SET last_heartbeat = v.beat "
                    "FROM unnest(%s::bigint[], %s::timestamptz[]) AS v(id, beat) WHERE n.id = v.id "
                    "AND n.id = ANY(%s) "  # by the primary key, not a scan of every node
                    "AND n.id IN (SELECT id FROM nodes_node WHERE id = ANY(%s) FOR UPDATE SKIP LOCKED)",
                    [ids, [beat for _, beat in refresh], ids, ids],
                )
        candidates = list(
            Node.objects.select_for_update().filter(pk__in=silent, status=Node.Status.READY).order_by("pk")
        )
        if candidates:
            # Their replicas turn Unknown below, node by node: lock them all first, in pk
            # order as report application does, or the two deadlock.
            list(
                Replica.objects.select_for_update()
                .filter(node_id__in=[node.pk for node in candidates], phase__in=Replica.REPORTABLE)
                .order_by("pk")
                .values_list("pk", flat=True)
            )
        for node in candidates:
            silence = now - last_seen(node.pk, node.last_heartbeat, node.status_changed_at)
            if silence <= grace:
                continue  # it beat while we looked
            message = (
                f"no heartbeat for {silence.total_seconds():.0f} s (grace {settings.NODE_GRACE_SECONDS:g} s)"
            )
            if mark_node_lost(node, now, "HeartbeatTimeout", message):
                lost.append(node.name)
        _recover(beats, now, grace)
    return lost


_silent_receivers = False  # as of this process's last pass: for logging the change only


def _say_receivers_silent(silent: bool) -> None:
    global _silent_receivers
    if silent and not _silent_receivers:
        log.warning(
            "no web process hears the agents' heartbeats (the web server is restarting, or its "
            "event loop stalls): no node is called silent until one does (for %.0f s at most), "
            "and then every node not heard since gets %.0f s more than its grace",
            heartbeats.HOLD_LIMIT_SECONDS,
            heartbeats.rejoin_allowance(),
        )
    elif _silent_receivers and not silent:
        log.info("web processes hear heartbeats again")
    _silent_receivers = silent


def _after_redis_loss() -> None:
    """Redis holds no heartbeat mark: it was restarted or flushed (or this is the first pass
    ever), so queued tasks and published desired sets may be gone with it. Once the agent
    consumers have rejoined their channel groups (nodes.sessions.GROUP_REFRESH_SECONDS), a
    resync reconciles every deployment and resends what agents may have missed."""
    from orchestrator.tasks import resync

    log.warning("Redis lost its data (no heartbeat mark): every node gets a fresh grace; resyncing")
    try:
        # Every consumer rejoins at its first heartbeat GROUP_REFRESH_SECONDS after its last join.
        resync.apply_async(
            kwargs={"after_redis_loss": True},
            countdown=GROUP_REFRESH_SECONDS + heartbeats.longest_interval() + 1,
        )
    except Exception as exc:  # Redis went again: the periodic resync runs once it is back
        log.warning("could not queue the resync: %s", exc)


def _recover(beats: dict[int, float], now: datetime, grace: timedelta) -> None:
    """Connected agents that heartbeat again make their node Ready; their desired set is
    sent again, so they report every replica afresh (their phases were set Unknown)."""
    candidates = Node.objects.select_for_update(skip_locked=True).filter(
        status=Node.Status.NOT_READY, session__isnull=False, status_reason="HeartbeatTimeout"
    )
    for node in candidates:
        if node.pk not in beats:
            continue
        beat = datetime.fromtimestamp(beats[node.pk], tz=UTC)
        if now - beat > grace or beat <= node.status_changed_at:
            continue
        node.last_heartbeat = beat
        node.mark_ready(now)
        node.resource_version += 1  # placement reads readiness
        node.save()
        record_event(node, "NodeReady", "heartbeats resumed", now=now)
        transaction.on_commit(lambda node_id=node.pk: dispatch_nodes([node_id], full=True))
