"""HTTP and TCP probe checks against real sockets on the loopback address."""

from __future__ import annotations

import asyncio
import contextlib

from agent.probes import HttpGet, TcpSocket
from agent.runtime.checks import http_get, parse_status_line, tcp_connect


@contextlib.asynccontextmanager
async def server(answer: bytes | None, requests: list[bytes] | None = None):
    """A TCP server on 127.0.0.1 that reads a request and sends `answer` (None: never answers)."""

    async def handle(reader, writer):
        request = await reader.readuntil(b"\r\n\r\n")
        if requests is not None:
            requests.append(request)
        if answer is None:
            await asyncio.sleep(10)
        writer.write(answer)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_http_status_decides():
    async def scenario():
        requests: list[bytes] = []
        async with server(b"HTTP/1.1 204 No Content\r\n\r\n", requests) as port:
            assert (await http_get("127.0.0.1", HttpGet(port, "/healthz?x=1"), 1)).ok
        assert requests[0].startswith(b"GET /healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1:")
        async with server(b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\n") as port:
            assert (await http_get("127.0.0.1", HttpGet(port), 1)).ok
        async with server(b"HTTP/1.1 503 Service Unavailable\r\n\r\n") as port:
            result = await http_get("127.0.0.1", HttpGet(port, "/healthz"), 1)
            assert not result.ok and result.detail == f"HTTP GET :{port}/healthz: status 503"
        async with server(b"SSH-2.0-OpenSSH\r\n") as port:
            assert (await http_get("127.0.0.1", HttpGet(port), 1)).detail.endswith(": not an HTTP response")

    asyncio.run(scenario())


def test_http_refused_and_timeout():
    async def scenario():
        port = free_port()
        result = await http_get("127.0.0.1", HttpGet(port), 1)
        assert result.detail == f"HTTP GET :{port}/: connection refused"
        async with server(None) as port:
            result = await http_get("127.0.0.1", HttpGet(port), 0.2)
            assert result.detail == f"HTTP GET :{port}/: timed out after 0.2 s"

    asyncio.run(scenario())


def test_tcp_connect():
    async def scenario():
        async with server(b"") as port:
            assert (await tcp_connect("127.0.0.1", TcpSocket(port), 1)).ok
        port = free_port()
        assert (
            await tcp_connect("127.0.0.1", TcpSocket(port), 1)
        ).detail == f"tcp :{port}: connection refused"

    asyncio.run(scenario())


def test_parse_status_line():
    assert parse_status_line(b"HTTP/1.1 200 OK\r\n") == 200
    assert parse_status_line(b"HTTP/1.0 404\r\n") == 404
    assert parse_status_line(b"") is None
    assert parse_status_line(b"HTTP/1.1 abc\r\n") is None
