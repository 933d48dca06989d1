"""The agent consumer's part in streams (logs, exec) and metrics; see docs/agent-protocol.md §4.

Browser consumers (and the REST logs view) ask a node's agent for a stream by sending
`agent.forward` to the node's group with the frame and their own channel (`reply_to`).
The agent consumer remembers which channel each stream answers to and passes the agent's
stream frames there. It never waits for a viewer: when a viewer's channel is full the
lines are dropped and counted, and the count travels with the next batch that gets through.
"""

from __future__ import annotations

import logging

from channels.exceptions import ChannelFull

from web import metrics_store

log = logging.getLogger(__name__)

# Frames the agent sends about a stream, and the ones that end it.
STREAM_REPLIES = frozenset({"logs", "exec.started", "exec.output", "stream.end", "stream.error"})
_ENDING = frozenset({"stream.end"})
_OPENING = frozenset({"logs.open", "exec.open"})
MAX_ROUTES = 1024  # streams per agent connection the control plane keeps track of


def stream_message(frame: dict, dropped: int = 0) -> dict:
    """The channel-layer message a viewer's consumer receives for one agent stream frame."""
    return {"type": "agent.stream", "frame": frame, "dropped": dropped}


class AgentStreamsMixin:
    """Mixed into AgentConsumer; needs `send_json`, `channel_layer`, `node_id`, `node_name`."""

    def _routes(self) -> dict[str, str]:
        routes = self.__dict__.get("_stream_routes")
        if routes is None:
            routes = self.__dict__["_stream_routes"] = {}
            self.__dict__["_stream_dropped"] = {}
        return routes

    async def agent_forward(self, event):
        """A frame for the agent from a viewer's consumer (group message on the node's group)."""
        frame = event["frame"]
        routes = self._routes()
        kind = frame.get("type")
        if kind in _OPENING:
            if len(routes) >= MAX_ROUTES:
                await self._reply(
                    event["reply_to"],
                    {
                        "type": "stream.end",
                        "stream": frame["stream"],
                        "error": "too many streams on this node",
                        "exit_code": None,
                    },
                )
                return
            routes[frame["stream"]] = event["reply_to"]
        elif kind == "stream.close":
            routes.pop(frame.get("stream"), None)
        await self.send_json(frame)

    async def receive_stream_frame(self, content: dict) -> None:
        """A stream or metrics frame from the agent."""
        kind = content.get("type")
        if kind == "metrics":
            await metrics_store.record(self.node_id, content)
            return
        stream = content.get("stream")
        routes = self._routes()
        reply_to = routes.get(stream) if isinstance(stream, str) else None
        if reply_to is None:
            if kind == "logs" and isinstance(stream, str):
                await self.send_json({"type": "stream.close", "stream": stream})  # nobody asked for it
            return
        if kind in _ENDING:
            routes.pop(stream, None)
        dropped_counts = self.__dict__["_stream_dropped"]
        dropped = dropped_counts.pop(stream, 0)
        try:
            await self.channel_layer.send(reply_to, stream_message(content, dropped))
        except ChannelFull:
            # The viewer is not keeping up: drop this batch rather than wait for it.
            lost = len(content.get("lines") or ()) if kind == "logs" else 0
            dropped_counts[stream] = dropped + lost
            if kind in _ENDING:
                log.info(
                    "stream %s of node %s ended but its viewer's channel is full", stream, self.node_name
                )

    async def _reply(self, channel: str, frame: dict) -> None:
        try:
            await self.channel_layer.send(channel, stream_message(frame))
        except ChannelFull:
            pass

    async def end_streams(self, reason: str) -> None:
        """The agent is gone: every stream it carried ends (viewers may open them again later)."""
        routes = self._routes()
        for stream, reply_to in list(routes.items()):
            await self._reply(
                reply_to, {"type": "stream.end", "stream": stream, "error": reason, "exit_code": None}
            )
        routes.clear()
