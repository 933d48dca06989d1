"""Live logs of one replica or of all replicas of a deployment, merged (logs streams, §4 of
docs/agent-protocol.md).

/ws/namespaces/{ns}/deployments/{name}/logs/ and /ws/namespaces/{ns}/replicas/{replica}/logs/.
The client sends `{"type": "subscribe", "tail": 100, "since": null, "cursors": {}}`
(`cursors`: per replica, the newest line time it has, when it reconnects after a blip)
and receives `{"type": "subscribed", "replicas": [...]}`, then `{"type": "lines", "lines":
[[replica, time, stream, text], ...]}` where a `[null, null, "dropped", N]` entry marks N
lines this viewer was too slow for. One agent log stream per replica watched, for as long
as this socket is open: nothing streams when nobody watches.
"""

from __future__ import annotations

import asyncio
import re
import time

from channels.db import database_sync_to_async

from orchestrator.broadcast import deployment_group
from orchestrator.models import Deployment, Replica
from web.consumers.viewer import BadRequest, ViewerConsumer
from web.permissions import can_view_namespace
from web.streams import LogCursor, SinceError, ViewerBuffer, parse_since

MAX_TAIL = 100_000
DEFAULT_TAIL = 200
SEND_BATCH = 500
RETRY_SECONDS = 2.0
UNANSWERED_SECONDS = 8.0  # an agent answers `logs.open` at once (an empty `logs` frame)
_CURSOR = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}Z$")
# Phases in which a replica has (or had) a container whose logs can be read.
_WITH_LOGS = (Replica.Phase.RUNNING, Replica.Phase.FAILED, Replica.Phase.SUCCEEDED, Replica.Phase.TERMINATING)


def validate_tail(value, field="tail"):
    if value is None:
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TAIL:
        raise BadRequest(field, f"tail must be a whole number of lines between 0 and {MAX_TAIL}")
    return value


def validate_since(value, field="since"):
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise BadRequest(field, "since must be a string")
    try:
        return parse_since(value)
    except SinceError as exc:
        raise BadRequest(field, str(exc)) from None


def target_replicas(user, namespace: str, deployment: str | None, replica: str | None):
    """(deployment pk, {replica name: (node id, container id, restart count)}) the user may read.

    Raises BadRequest naming what was not found (or not allowed: the same answer, so names
    in namespaces one cannot see do not leak)."""
    queryset = Replica.objects.select_related("namespace", "deployment").filter(namespace__name=namespace)
    if replica is not None:
        found = queryset.filter(name=replica).first()
        if found is None or not can_view_namespace(user, found.namespace):
            raise BadRequest("replica", f"replica {replica!r} not found in namespace {namespace!r}")
        return found.deployment_id, {found.name: _source(found)}
    found = (
        Deployment.live.select_related("namespace").filter(namespace__name=namespace, name=deployment).first()
    )
    if found is None or not can_view_namespace(user, found.namespace):
        raise BadRequest("deployment", f"deployment {deployment!r} not found in namespace {namespace!r}")
    replicas = found.replica_set.order_by("created_at", "name")
    return found.pk, {r.name: _source(r) for r in replicas}


def _source(replica: Replica):
    if replica.node_id is None or not replica.container_id or replica.phase not in _WITH_LOGS:
        return None
    return (replica.node_id, replica.container_id, replica.restart_count)


class LogsConsumer(ViewerConsumer):
    buffer_lines = 10_000  # per viewer; past this, lines are dropped (with a marker)

    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        self.namespace = kwargs["namespace"]
        self.deployment_name = kwargs.get("name")
        self.replica_name = kwargs.get("replica")
        self.subscribed = False
        self.group = None
        self.buffer = ViewerBuffer(self.buffer_lines)
        self.wake = asyncio.Event()
        self.sender: asyncio.Task | None = None
        self.by_replica: dict[str, str] = {}  # replica -> open stream id
        self.stream_replica: dict[str, str] = {}
        self.finished: dict[str, tuple] = {}  # replica -> the source whose stream ended for good
        self.cursor = LogCursor()
        self.unanswered: dict[str, float] = {}  # stream -> when it was opened, until the agent answers
        self.tail = DEFAULT_TAIL
        self.since = None
        await super().connect()

    async def on_message(self, content):
        if content["type"] != "subscribe":
            raise BadRequest("type", "the only message a log socket takes is 'subscribe'")
        tail = validate_tail(content.get("tail", DEFAULT_TAIL))
        since = validate_since(content.get("since"))
        cursors = content.get("cursors") or {}
        if not isinstance(cursors, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and _CURSOR.match(v) for k, v in cursors.items()
        ):
            raise BadRequest(
                "cursors", "cursors must map replica names to line times as the server sent them"
            )
        deployment_id, sources = await database_sync_to_async(target_replicas)(
            self.user, self.namespace, self.deployment_name, self.replica_name
        )
        # A new subscription replaces the last one.
        for stream in list(self.by_replica.values()):
            await self.close_stream(stream)
        self.by_replica.clear()
        self.stream_replica.clear()
        self.finished.clear()
        self.tail, self.since, self.cursor = tail, since, LogCursor(cursors)
        if self.group is None:
            self.group = deployment_group(deployment_id)
            await self.channel_layer.group_add(self.group, self.channel_name)
        self.subscribed = True
        if self.sender is None:
            self.sender = asyncio.create_task(self._send_forever())
        self.ensure_ticking()  # replicas that are not running yet are looked at again
        await self.send_json({"type": "subscribed", "replicas": sorted(sources)})
        await self._sync_streams(sources)

    async def _sync_streams(self, sources=None):
        """Open a stream for every replica with a container and none streaming; close the rest."""
        if not self.subscribed:
            return
        if sources is None:
            try:
                _, sources = await database_sync_to_async(target_replicas)(
                    self.user, self.namespace, self.deployment_name, self.replica_name
                )
            except BadRequest:
                sources = {}  # deleted
        for replica, stream in list(self.by_replica.items()):
            if replica not in sources:
                await self.close_stream(stream)
                del self.by_replica[replica]
        for replica, source in sources.items():
            if source is None or replica in self.by_replica or self.finished.get(replica) == source:
                continue
            node_id = source[0]
            last = self.cursor.resume(replica)
            frame = {
                "type": "logs.open",
                "namespace": self.namespace,
                "replica": replica,
                "since": last or self.since,
                "tail": None if last else self.tail,
                "follow": True,
            }
            stream = await self.open_stream(node_id, frame)
            self.unanswered[stream] = time.monotonic()
            self.by_replica[replica] = stream
            self.stream_replica[stream] = (replica, source)

    async def on_stream(self, stream, frame, dropped):
        replica, source = self.stream_replica.get(stream, (None, None))
        if replica is None:
            return
        self.unanswered.pop(stream, None)
        if dropped:
            self.buffer.add_dropped(dropped)
        kind = frame.get("type")
        if kind == "logs":
            lines = self.cursor.fresh(replica, frame.get("lines") or ())
            self.buffer.add([replica, *line] for line in lines)
        elif kind in ("stream.end", "stream.error"):
            self.stream_replica.pop(stream, None)
            if self.by_replica.get(replica) == stream:
                del self.by_replica[replica]
            if frame.get("error"):
                asyncio.get_running_loop().call_later(
                    RETRY_SECONDS, lambda: asyncio.ensure_future(self._sync_streams())
                )
            else:
                self.finished[replica] = source  # the container stopped; a restart opens it again
        self.wake.set()

    async def state_changed(self, event):
        await self._sync_streams()

    async def on_tick(self):
        # An open that got no answer went nowhere (the node's agent was not connected, or
        # reconnected meanwhile): give it up, and open it again if the replica still runs.
        now = time.monotonic()
        for stream, opened in list(self.unanswered.items()):
            if now - opened >= UNANSWERED_SECONDS:
                del self.unanswered[stream]
                replica, _ = self.stream_replica.pop(stream, (None, None))
                if replica is not None and self.by_replica.get(replica) == stream:
                    del self.by_replica[replica]
                await self.close_stream(stream)
        await self._sync_streams()

    async def _send_forever(self):
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.buffer.pending:
                await self.send_json({"type": "lines", "lines": self.buffer.drain(SEND_BATCH)})

    async def on_disconnect(self):
        self.subscribed = False
        if self.sender is not None:
            self.sender.cancel()
        if self.group is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)
