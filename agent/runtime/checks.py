"""The network checks of HTTP and TCP probes: a short asyncio connection to the container's address.

Like kubelet probing a pod's IP, the agent connects to the container's own address on its
engine network, so a probe needs no published port. A raw HTTP/1.1 request is enough to
read a status code: no HTTP client dependency, and the body is never read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from agent import __version__
from agent.probes import HttpGet, ProbeResult, TcpSocket

MAX_STATUS_LINE = 1024


async def http_get(address: str, handler: HttpGet, timeout: float) -> ProbeResult:
    """Success: an HTTP status 200..399 within `timeout` seconds."""
    where = handler.describe()
    host = f"[{address}]" if ":" in address else address
    request = (
        f"GET {handler.path} HTTP/1.1\r\n"
        f"Host: {host}:{handler.port}\r\n"
        f"User-Agent: berth-agent/{__version__}\r\n"
        "Accept: */*\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(address, handler.port, limit=MAX_STATUS_LINE)
            try:
                writer.write(request.encode("ascii"))
                await writer.drain()
                line = await reader.readline()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except TimeoutError:
        return ProbeResult(False, f"{where}: timed out after {timeout:g} s")
    except (OSError, ValueError, asyncio.LimitOverrunError) as exc:
        return ProbeResult(False, f"{where}: {_os_error(exc)}")
    status = parse_status_line(line)
    if status is None:
        return ProbeResult(False, f"{where}: not an HTTP response")
    if 200 <= status < 400:
        return ProbeResult(True)
    return ProbeResult(False, f"{where}: status {status}")


async def tcp_connect(address: str, handler: TcpSocket, timeout: float) -> ProbeResult:
    """Success: a TCP connection within `timeout` seconds (closed again at once)."""
    where = handler.describe()
    try:
        async with asyncio.timeout(timeout):
            _reader, writer = await asyncio.open_connection(address, handler.port)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    except TimeoutError:
        return ProbeResult(False, f"{where}: timed out after {timeout:g} s")
    except OSError as exc:
        return ProbeResult(False, f"{where}: {_os_error(exc)}")
    return ProbeResult(True)


def parse_status_line(line: bytes) -> int | None:
    """The status code of "HTTP/1.1 200 OK", or None if the line is not an HTTP status line."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit() or len(parts[1]) != 3:
        return None
    return int(parts[1])


def _os_error(exc: BaseException) -> str:
    """ "connection refused", "no route to host": the error's own words, without the address."""
    number = getattr(exc, "errno", None)
    text = os.strerror(number) if isinstance(number, int) and number > 0 else str(exc) or type(exc).__name__
    return text[:1].lower() + text[1:]
