"""The agent's keepalive: a ping only after the control plane has been quiet.

websockets pings every `ping_interval` whatever the traffic. The control plane (uvicorn)
already pings every agent every 20 s, so pinging back as well doubled those frames: at
5,000 nodes 500 frames a second more for the web processes and the fleet, a fifth of
their frames at rest. Here the agent pings only when it has received nothing at all for
`ping_interval` (HTTP/2's and gRPC's keepalives do the same), and a pong that does not come
within `ping_timeout` ends the connection, as websockets' own keepalive does. A control
plane that pings (every 20 s) is never pinged; one that does not, or has gone silent (a
partition, a hung process), is pinged, and dropped after `ping_interval + ping_timeout`
and the close timeout at most.
"""

from __future__ import annotations

import asyncio

from websockets.asyncio.client import ClientConnection
from websockets.frames import CloseCode


class QuietKeepaliveConnection(ClientConnection):
    """A client connection whose keepalive pings only after `ping_interval` of silence."""

    last_received = 0.0  # the loop's time of the last bytes from the control plane

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.last_received = self.loop.time()
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.last_received = self.loop.time()
        super().data_received(data)

    async def keepalive(self) -> None:
        # Replaces websockets' loop (Connection.keepalive, websockets 17), which
        # Connection.start_keepalive runs in a task when `ping_interval` is set and
        # connection_lost cancels.
        assert self.ping_interval is not None
        try:
            while True:
                quiet = self.loop.time() - self.last_received
                if quiet < self.ping_interval:
                    await asyncio.sleep(self.ping_interval - quiet)
                    continue
                pong_received = await self.ping()
                try:
                    async with asyncio.timeout(self.ping_timeout):
                        await pong_received
                except TimeoutError:
                    async with self.send_context():
                        self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                    raise AssertionError(
                        "send_context() waits for connection_lost(), which cancels this"
                    ) from None
        except Exception:
            self.logger.error("keepalive ping failed", exc_info=True)
