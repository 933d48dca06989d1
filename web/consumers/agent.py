"""The agents' WebSocket: one connection per node, authenticated by its credential.

It forwards the node's desired sets (published by workers to the node's group) and
hands what the agent reports to the controllers. See docs/agent-protocol.md.
"""

import asyncio
import functools
import json
import logging
import time
import uuid

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.db import InterfaceError, OperationalError

from config.channel_layer import ReceiveFailed
from nodes import heartbeats
from nodes.services import authenticate_node
from nodes.sessions import session_closed, session_hello
from orchestrator.dispatch import desired_set
from web.consumers import agent_gate
from web.consumers.agent_streams import STREAM_REPLIES, AgentStreamsMixin
from web.consumers.reports import report_buffer

log = logging.getLogger(__name__)

# PostgreSQL restarting: the agent's session survives it (see _retry_database).
DATABASE_ERRORS = (OperationalError, InterfaceError)
RETRY_FIRST, RETRY_MAX = 0.5, 5.0
SERVER_RESTART = 1012  # the close code uvicorn gives every WebSocket when it shuts down
HELLO_SLOT_SECONDS = 5.0  # from accept: an agent's hello comes right after its handshake
PARTIAL_SETS = "desired.partial"  # the hello feature of agents that take partial frames
SETTINGS = "settings"  # the hello feature of agents that take a new heartbeat interval
# The welcome feature saying that a status frame counts as a heartbeat: an agent that sent
# one needs no heartbeat until an interval after it (a busy fleet's beats mostly vanish).
STATUS_BEATS = "status.heartbeat"
# What this control plane understands beyond version 1 of the protocol (sent in `welcome`).
FEATURES = ["status.partial", STATUS_BEATS]
FULL_SET_EVERY = 1.0  # seconds: the most often an agent's request gets it a full set


def in_pool(fn):
    """Run a database call in the thread pool. Channels' default (thread_sensitive) runs every
    database call of the whole process on one thread, so thousands of agents' reports would
    queue behind each other; these calls are independent per node (each is its own
    transaction), so they can run side by side."""
    return database_sync_to_async(fn, thread_sensitive=False)


class AgentConsumer(AgentStreamsMixin, AsyncJsonWebsocketConsumer):
    node_id: int | None = None
    join_slot: object | None = None
    slot_timer: asyncio.TimerHandle | None = None

    async def __call__(self, scope, receive, send):
        """Channels' consumer loop, without its cost per message: it waits for the next
        message of either source (the socket, the channel layer) with asyncio.wait and a
        new task per message, which made a heartbeat cost 8 times what handling it did
        (benchmarks/agent_consumer.py). Here one pump per source hands messages to one
        loop; they are still handled one at a time, each source's in the order it sent
        them (channels promises no order between the two either). At most three messages
        wait outside their sources (one in the loop's queue, one held by each pump;
        channels' tasks hold two), so the channel layer's capacity still bounds what waits
        for a slow consumer."""
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        if self.channel_layer is None:
            await super().__call__(scope, receive, send)
            return
        self.scope = scope
        self.base_send = send
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        inbox: asyncio.Queue = asyncio.Queue(maxsize=1)

        async def pump(source):
            try:
                while True:
                    await inbox.put(await source())
            except BaseException as exc:
                if isinstance(exc, asyncio.CancelledError) and asyncio.current_task().cancelling():
                    raise  # the consumer is ending
                await inbox.put(ReceiveFailed(exc))  # the loop raises it, as channels' would

        loop = asyncio.get_running_loop()
        pumps = [loop.create_task(pump(receive)), loop.create_task(pump(self.channel_receive))]
        try:
            while True:
                message = await inbox.get()
                if type(message) is ReceiveFailed:
                    # The channel layer hands one exception to all its receivers: each
                    # raise would add its frames to the one traceback they share.
                    raise message.error.with_traceback(None)
                await self.dispatch(message)
        except StopConsumer:
            pass
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def dispatch(self, message):
        # Channels closes stale database connections before every message, on one thread
        # shared by the whole process: with thousands of agents heartbeating, that thread is
        # the bottleneck. Every database call here goes through in_pool, which does that
        # closing in its own thread, so the per-message hop is skipped.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        await handler(message)

    async def connect(self):
        self.join_slot = self.scope.get(agent_gate.SLOT)  # taken by the gate in front
        try:
            await self._admit(agent_gate.bearer(self.scope), self.scope.get(agent_gate.DIGEST))
        except BaseException:  # the database failed it, or it was cancelled: no slot is kept
            self._leave_gate()
            raise

    async def _admit(self, credential: str, digest: str | None):
        node = await in_pool(authenticate_node)(credential)
        if node is None:
            self._leave_gate()
            if digest is not None:
                agent_gate.credentials.forget(digest)  # rotated or removed: its knocks are no heartbeats
            log.warning("refused an agent connection from %s: bad credential", self.scope.get("client"))
            await self.close()  # before accept: the handshake is answered 403
            return
        if digest is not None:
            agent_gate.credentials.remember(digest, node.pk)
        self.node_id, self.node_name = node.pk, node.name
        self.group = node.channel_group
        self.session = uuid.uuid4()
        self.sent_generation = 0
        self.greeted = False
        self.partial_ok = False  # until its hello lists the feature (older agents take full sets only)
        self.settings_ok = False  # likewise: older agents keep the interval of their welcome
        self.told_interval = 0.0
        self.full_sent_at = float("-inf")
        self.full_task: asyncio.Task | None = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        self.joined_epoch = heartbeats.data_epoch()
        await self.accept()
        # An agent says hello as soon as it is accepted. One that does not within
        # HELLO_SLOT_SECONDS gives its slot back (its session goes on): the handshake of an
        # agent that had already given up, taken from the listen backlog, would otherwise
        # hold a slot that no join uses.
        self.slot_timer = asyncio.get_running_loop().call_later(HELLO_SLOT_SECONDS, self._leave_gate)
        log.info("agent of node %s connected", self.node_name)

    def _leave_gate(self):
        if self.join_slot is not None:
            agent_gate.gate().leave(self.join_slot)
            self.join_slot = None
        if self.slot_timer is not None:
            self.slot_timer.cancel()
            self.slot_timer = None

    async def disconnect(self, code):
        self._leave_gate()
        if self.node_id is None:
            return
        if self.full_task is not None:
            self.full_task.cancel()
        try:
            await self.end_streams("the node's agent disconnected")
        except Exception as exc:  # Redis down: viewers notice their stream went quiet
            log.warning("agent of node %s: ending its streams failed: %s", self.node_name, exc)
        try:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            if self.greeted and code == SERVER_RESTART:
                # This web process is shutting down, not the agent going away: it reconnects
                # (to us again, or to another web process) well within the grace. If it does
                # not, the node monitor notices the silence.
                log.info("agent of node %s: session ends with this web process", self.node_name)
            elif self.greeted:
                await in_pool(session_closed)(self.node_id, self.session)
        except Exception as exc:  # Redis or PostgreSQL down: the monitor notices the silence instead
            log.warning("agent of node %s: cleaning up its session failed: %s", self.node_name, exc)
        log.info("agent of node %s disconnected (%s)", self.node_name, code)

    # The agents' frames take the shortest way: channels' generic consumer goes through
    # three more coroutines per frame (receive, decode_json, encode_json), each a
    # classmethod or method made to be overridden, on thousands of frames a second.
    async def websocket_receive(self, message):
        text = message.get("text")
        if text is None:
            log.warning("node %s sent a binary frame; ignored", self.node_name)
            return
        try:
            content = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deep to parse
            log.warning("node %s sent a frame that is not JSON; ignored", self.node_name)
            return
        await self.receive_json(content)

    async def send_json(self, content, close=False):
        await self.base_send({"type": "websocket.send", "text": json.dumps(content)})
        if close:
            await self.close(close)  # as channels': True, or a close code

    async def receive_json(self, content, **kwargs):
        kind = content.get("type") if isinstance(content, dict) else None
        if kind == "heartbeat":
            await self._beat()
        elif kind == "status":
            await self._report(content)
            await self._beat()  # a status frame is a heartbeat too (STATUS_BEATS)
        elif kind == "hello":
            await self._hello(content)
        elif kind == "desired.request":
            self._request_full_set()
        elif kind in STREAM_REPLIES or kind == "metrics":
            await self.receive_stream_frame(content)  # logs, exec, metrics: agent_streams.py
        else:
            log.warning("node %s sent an unknown frame type %r; ignored", self.node_name, kind)

    async def _beat(self):
        await heartbeats.record(self.node_id, time.time())
        await self._refresh_group()
        if self.settings_ok and (interval := heartbeats.interval()) != self.told_interval:
            # The fleet grew or shrank: beat at the rate it calls for (nodes/heartbeats.py).
            self.told_interval = interval
            await self.send_json({"type": "settings", "heartbeat_interval": interval})

    async def _hello(self, hello: dict):
        if self.slot_timer is not None:  # the join is under way: its slot is kept until it ends
            self.slot_timer.cancel()
            self.slot_timer = None
        client = self.scope.get("client") or ("", 0)
        await heartbeats.record(self.node_id, time.time())
        await self._retry_database(session_hello, self.node_id, self.session, hello, client[0] or "")
        self.greeted = True
        features = hello.get("features")
        self.partial_ok = isinstance(features, list) and PARTIAL_SETS in features
        self.settings_ok = isinstance(features, list) and SETTINGS in features
        self.told_interval = heartbeats.interval()
        await self.send_json(
            {
                "type": "welcome",
                "node": self.node_name,
                "heartbeat_interval": self.told_interval,
                "features": FEATURES,
            }
        )
        # The full set on every connect: a lost message is never a lost replica.
        await self._send_full_set()
        self._leave_gate()  # joined

    async def _send_full_set(self):
        self.full_sent_at = time.monotonic()
        frame = await self._retry_database(desired_set, self.node_id)
        if frame is not None:
            await self._send_desired(frame)

    def _request_full_set(self):
        """The agent could not apply a partial frame (it lacks an entry: a frame was lost).
        It gets the full set, at most once per FULL_SET_EVERY; requests meanwhile share it."""
        if not self.greeted or (self.full_task is not None and not self.full_task.done()):
            return

        async def answer():
            await asyncio.sleep(max(0.0, self.full_sent_at + FULL_SET_EVERY - time.monotonic()))
            await self._send_full_set()

        log.info("agent of node %s asked for its full desired set", self.node_name)
        self.full_task = asyncio.get_running_loop().create_task(answer(), name="berth-full-set")

    async def desired_push(self, event):
        if not self.greeted:
            return
        frame = event["frame"]
        if frame.get("partial") and not self.partial_ok:
            # An agent from before partial frames: it gets the whole set, read here.
            if frame["generation"] > self.sent_generation:
                await self._send_full_set()
            return
        await self._send_desired(frame)

    async def _send_desired(self, frame: dict):
        if frame["generation"] <= self.sent_generation:
            return  # an older set overtaken by a newer one
        self.sent_generation = frame["generation"]
        await self.send_json(frame)

    # --- surviving a Redis or PostgreSQL restart -----------------------------------------------

    async def _refresh_group(self):
        """Join the node's group again once Redis was found to have lost its data (the
        heartbeat flush notices: nodes.heartbeats.data_epoch): a restarted or flushed Redis
        forgot the group, and desired sets published to it would reach nobody. (A restarted
        Redis also breaks this consumer's channel, which ends the connection: the agent
        reconnects.) Checking is one comparison per heartbeat; joining costs Redis calls."""
        epoch = heartbeats.data_epoch()
        if epoch == self.joined_epoch:
            return
        self.joined_epoch = epoch
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def _retry_database(self, fn, *args):
        """Call `fn` in the pool until PostgreSQL answers, backing off to RETRY_MAX seconds; the
        agent's connection stays up meanwhile (closing it would only make it back off too)."""
        delay = RETRY_FIRST
        while True:
            try:
                return await in_pool(fn)(*args)
            except DATABASE_ERRORS as exc:
                log.warning("agent of node %s: database unavailable (%s); retrying in %.1f s",
                            self.node_name, str(exc).strip() or type(exc).__name__, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _report(self, content: dict):
        """Queue a status report for this process's next batch (web/consumers/reports.py),
        which also keeps it through a PostgreSQL outage."""
        report_buffer().submit(self.node_id, content)
