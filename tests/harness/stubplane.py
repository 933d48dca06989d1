"""A WebSocket endpoint that speaks the agent session protocol (docs/agent-protocol.md, section 2).

For agent tests that must send `desired` entries the real control plane does not produce
(yet), and read every `status` frame the agent sends, with the time it arrived. The agent
under test is the real one (`host.start_agent`), given a credential file instead of a join
token, so it connects here without enrolling:

    plane = StubControlPlane(host.gateway, node=host.name).start()
    write_credential(host.state_dir, plane.url, host.name)
    host.start_agent(plane.url, None)
    plane.set_desired([{...}])
    wait_for(lambda: plane.replica("web-1", "phase") == "Running", 30, "web-1 Running")
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

CREDENTIAL = "berth_node_stub-credential"


def write_credential(state_dir: Path, server: str, node: str) -> None:
    """Put a credential for `server` in an agent's state directory, as enrollment would."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / "credential.json"
    path.write_text(json.dumps({"server": server, "node": node, "credential": CREDENTIAL}))
    path.chmod(0o600)


class StubControlPlane:
    def __init__(self, host: str, *, node: str, heartbeat_interval: float = 1.0) -> None:
        self.host = host
        self.node = node
        self.port = 0
        self.heartbeat_interval = heartbeat_interval
        self.generation = 0
        self.statuses: list[tuple[float, dict[str, Any]]] = []  # (time.time(), frame)
        self.hellos: list[dict[str, Any]] = []
        self._desired: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._connection: ServerConnection | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="stub-plane", daemon=True)
        self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> StubControlPlane:
        self._thread.start()

        async def listen():
            return await serve(self._serve, self.host, 0, ping_interval=None)

        self._server = asyncio.run_coroutine_threadsafe(listen(), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            asyncio.run_coroutine_threadsafe(self._server.wait_closed(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def set_desired(self, replicas: Sequence[dict[str, Any]]) -> int:
        """Send a new full desired set (now, or on the next connect); returns its generation."""
        with self._lock:
            self.generation += 1
            self._desired = list(replicas)
            frame = self._desired_frame()
        asyncio.run_coroutine_threadsafe(self._send(frame), self._loop).result(10)
        return frame["generation"]

    def last_status(self) -> dict[str, Any] | None:
        with self._lock:
            return self.statuses[-1][1] if self.statuses else None

    def replica(self, name: str, field: str | None = None) -> Any:
        """The replica's entry in the latest status frame (or one field of it); None if absent."""
        frame = self.last_status()
        for entry in (frame or {}).get("replicas", []):
            if entry["name"] == name:
                return entry if field is None else entry.get(field)
        return None

    def history(self, name: str) -> list[tuple[float, dict[str, Any]]]:
        """Every (arrival time, entry) of the replica, oldest first."""
        with self._lock:
            frames = list(self.statuses)
        return [
            (at, entry)
            for at, frame in frames
            for entry in frame.get("replicas", [])
            if entry["name"] == name
        ]

    # -- the session ------------------------------------------------------------------------

    def _desired_frame(self) -> dict[str, Any]:
        return {"type": "desired", "generation": self.generation, "replicas": self._desired}

    async def _send(self, frame: dict[str, Any]) -> None:
        if self._connection is not None:
            try:
                await self._connection.send(json.dumps(frame))
            except ConnectionClosed:
                pass

    async def _serve(self, ws: ServerConnection) -> None:
        if ws.request is None or ws.request.headers.get("Authorization") != f"Bearer {CREDENTIAL}":
            await ws.close(code=1008, reason="bad credential")
            return
        hello = json.loads(await ws.recv())
        self.hellos.append(hello)
        welcome = {"type": "welcome", "node": self.node, "heartbeat_interval": self.heartbeat_interval}
        await ws.send(json.dumps(welcome))
        self._connection = ws
        with self._lock:
            frame = self._desired_frame() if self.generation else None
        if frame is not None:
            await ws.send(json.dumps(frame))
        try:
            async for message in ws:
                data = json.loads(message)
                if data.get("type") == "status":
                    with self._lock:
                        self.statuses.append((time.time(), data))
        except ConnectionClosed:
            pass
        finally:
            if self._connection is ws:
                self._connection = None
