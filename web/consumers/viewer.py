"""The base of the stream consumers (logs, terminal, metrics): who is asking, and their agent streams.

Authentication: the session cookie (browsers), or an API token in the first message
(`{"type": ..., "token": "berth_api_..."}`, for scripts): never in the URL, where it would
end up in access logs. A socket with neither is closed with code 4401 (4403: not allowed).
Bad input is answered with `{"type": "error", "field": ..., "message": ...}` and the socket
stays open.

Streams: `open_stream` asks the node's agent (through its agent consumer) for a stream that
answers to this consumer's channel; a lease keeps it alive while this consumer renews it,
so a consumer that dies without closing leaves nothing running on the agent for long.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from nodes.models import Node
from web.api.authentication import user_for_api_token

log = logging.getLogger(__name__)

AUTH_TIMEOUT_SECONDS = 10.0
LEASE_SECONDS = 30.0
RENEW_SECONDS = 10.0
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403


def node_group(node_id: int) -> str:
    return Node(pk=node_id).channel_group


class BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class ViewerConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.user = None
        self.streams: dict[str, int] = {}  # stream id -> node id
        self._renewer: asyncio.Task | None = None
        self._auth_timer: asyncio.Task | None = None
        user = self.scope.get("user")
        if user is not None and user.is_authenticated and user.is_active:
            self.user = user
        else:
            self._auth_timer = asyncio.create_task(self._close_unless_authenticated())
        await self.accept()

    async def _close_unless_authenticated(self):
        await asyncio.sleep(AUTH_TIMEOUT_SECONDS)
        if self.user is None:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def disconnect(self, code):
        for task in (self._renewer, self._auth_timer):
            if task is not None:
                task.cancel()
        for stream in list(self.streams):
            await self.close_stream(stream)
        await self.on_disconnect()

    async def receive_json(self, content, **kwargs):
        if not isinstance(content, dict) or not isinstance(content.get("type"), str):
            await self.send_error("type", "each message must be a JSON object with a string 'type'")
            return
        if self.user is None:
            self.user = await database_sync_to_async(user_for_api_token)(content.get("token"))
            if self.user is None:
                await self.send_json(
                    {"type": "error", "field": "token", "message": "authentication required"}
                )
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
        try:
            await self.on_message(content)
        except BadRequest as exc:
            await self.send_error(exc.field, exc.message)

    async def send_error(self, field: str, message: str) -> None:
        await self.send_json({"type": "error", "field": field, "message": message})

    # -- agent streams ----------------------------------------------------------------------

    async def open_stream(self, node_id: int, frame: dict) -> str:
        stream = uuid.uuid4().hex
        self.streams[stream] = node_id
        await self.forward(node_id, {**frame, "stream": stream, "lease": LEASE_SECONDS})
        self.ensure_ticking()
        return stream

    def ensure_ticking(self) -> None:
        """Renew leases (and call on_tick) every RENEW_SECONDS from now on."""
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_forever())

    async def close_stream(self, stream: str) -> None:
        node_id = self.streams.pop(stream, None)
        if node_id is not None:
            await self.forward(node_id, {"type": "stream.close", "stream": stream})

    async def forward(self, node_id: int, frame: dict) -> None:
        await self.channel_layer.group_send(
            node_group(node_id), {"type": "agent.forward", "frame": frame, "reply_to": self.channel_name}
        )

    async def _renew_forever(self):
        while True:
            await asyncio.sleep(RENEW_SECONDS)
            try:
                by_node: dict[int, list[str]] = {}
                for stream, node_id in self.streams.items():
                    by_node.setdefault(node_id, []).append(stream)
                for node_id, ids in by_node.items():
                    await self.forward(
                        node_id, {"type": "streams.renew", "streams": ids, "lease": LEASE_SECONDS}
                    )
                await self.on_tick()
            except Exception:
                log.exception("renewing streams failed")

    async def agent_stream(self, event):
        frame = event["frame"]
        stream = frame.get("stream")
        if stream not in self.streams:
            return  # closed already
        if frame.get("type") in ("stream.end", "stream.error"):
            self.streams.pop(stream, None)
        await self.on_stream(stream, frame, event.get("dropped", 0))

    # -- for subclasses ---------------------------------------------------------------------

    async def on_message(self, content: dict) -> None:
        raise NotImplementedError

    async def on_stream(self, stream: str, frame: dict, dropped: int) -> None:
        pass

    async def on_tick(self) -> None:
        """Every RENEW_SECONDS while streams are open."""

    async def on_disconnect(self) -> None:
        pass
