"""The agent's keepalive (agent/keepalive.py) against a real websockets server: it pings
only after the control plane has been quiet, and drops a control plane that stops
answering."""

from __future__ import annotations

import asyncio
import time

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve

from agent.keepalive import QuietKeepaliveConnection

QUIET, TIMEOUT = 0.3, 0.3
CLOSE_TIMEOUT = 0.5  # a deaf server never completes the close handshake either


def counting(base):
    class Counting(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.pings = 0

        async def ping(self, data=None):
            self.pings += 1
            return await super().ping(data)

    return Counting


async def hold(server_ping_interval, connection_class, seconds: float, *, deaf: bool = False):
    """Connect to a server pinging every `server_ping_interval` s (None: never) and keep the
    connection `seconds` (or until it closes); `deaf`: the server stops reading, so it
    answers no ping. Returns the client and how long it stayed open (None: to the end)."""

    async def handler(ws):
        if deaf:
            ws.transport.pause_reading()
        await ws.wait_closed()

    async with serve(
        handler, "127.0.0.1", 0, ping_interval=server_ping_interval, close_timeout=CLOSE_TIMEOUT
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(
            f"ws://127.0.0.1:{port}/",
            ping_interval=QUIET,
            ping_timeout=TIMEOUT,
            close_timeout=CLOSE_TIMEOUT,
            create_connection=connection_class,
        ) as client:
            opened = time.monotonic()
            try:
                await asyncio.wait_for(client.wait_closed(), timeout=seconds)
            except TimeoutError:
                return client, None
            return client, time.monotonic() - opened


def test_a_control_plane_that_pings_is_never_pinged_back():
    client, closed_after = asyncio.run(hold(0.1, counting(QuietKeepaliveConnection), 1.5))
    assert client.pings == 0
    assert closed_after is None


def test_websockets_own_keepalive_pings_however_busy_the_control_plane_is():
    # The reference the first test is measured against: without the quiet keepalive, pings
    # go every QUIET seconds all the same.
    client, closed_after = asyncio.run(hold(0.1, counting(ClientConnection), 1.5))
    assert client.pings >= 3
    assert closed_after is None


def test_a_quiet_control_plane_is_pinged_and_kept_while_it_answers():
    client, closed_after = asyncio.run(hold(None, counting(QuietKeepaliveConnection), 1.5))
    assert 2 <= client.pings <= 5  # one per quiet interval (a pong counts as traffic)
    assert closed_after is None


@pytest.mark.timeout(30)
def test_a_control_plane_that_stops_answering_is_dropped_after_quiet_plus_timeout():
    client, closed_after = asyncio.run(hold(None, QuietKeepaliveConnection, 10.0, deaf=True))
    assert closed_after is not None, "still open after 10 s"
    assert closed_after < QUIET + TIMEOUT + CLOSE_TIMEOUT + 1.0, closed_after
    sent = client.protocol.close_sent  # the server, deaf, never answers the close either
    assert (sent.code, sent.reason) == (1011, "keepalive ping timeout"), sent
