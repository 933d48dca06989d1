"""Hollow nodes (`python -m agent.hollow`) against a small stand-in control plane.

Every hollow node is a real agent session over a FakeRuntime: it enrolls (the HTTP call is
replaced), says hello with its own size, labels and images, heartbeats, runs the desired
set it is sent and reports it Running. A rerun with the same state directory reuses the
stored credentials instead of enrolling again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections import Counter

from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from agent import enroll as enroll_module
from agent.config import load_config
from agent.credential import Credential
from agent.hollow import BASE_IMAGE, fleet, run_fleet
from devtools.services import free_port

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class StandInControlPlane:
    """Accepts credentials "cred-<node>"; sends each node two replicas; records what it hears."""

    def __init__(self) -> None:
        self.hellos: dict[str, dict] = {}
        self.heartbeats: Counter[str] = Counter()
        self.running: dict[str, set[str]] = {}

    def process_request(self, connection, request):
        if not request.headers.get("Authorization", "").startswith("Bearer cred-"):
            return connection.respond(403, "bad credential\n")
        return None

    async def handler(self, ws):
        node = ws.request.headers["Authorization"].removeprefix("Bearer cred-")
        with contextlib.suppress(ConnectionClosed):  # the fleet is cancelled at the end
            await self.serve(ws, node)

    async def serve(self, ws, node):
        async for message in ws:
            frame = json.loads(message)
            if frame["type"] == "hello":
                self.hellos[node] = frame
                await ws.send(json.dumps({"type": "welcome", "node": node, "heartbeat_interval": 0.1}))
                await ws.send(json.dumps(desired(node)))
            elif frame["type"] == "heartbeat":
                self.heartbeats[node] += 1
            elif frame["type"] == "status":
                self.running[node] = {r["name"] for r in frame["replicas"] if r["phase"] == "Running"}

    def done(self, names: list[str]) -> bool:
        return all(self.running.get(n) == {f"{n}-a", f"{n}-b"} and self.heartbeats[n] >= 1 for n in names)


def desired(node: str) -> dict:
    replica = {
        "namespace": "default",
        "deployment": "web",
        "revision": "r1",
        "image": "hollow/app-1:1",
        "command": None,
        "env": {},
        "ports": [],
        "resources": {"cpu_millis": 100, "memory_bytes": 64 << 20},
    }
    return {
        "type": "desired",
        "generation": 1,
        "replicas": [{**replica, "name": f"{node}-a"}, {**replica, "name": f"{node}-b"}],
    }


async def run_against(plane: StandInControlPlane, profiles, state_dir, *, port: int, rate: float) -> None:
    async with serve(plane.handler, "127.0.0.1", port, process_request=plane.process_request):
        server_url = f"http://127.0.0.1:{port}"
        template = load_config(
            ["--server", server_url, "--name", profiles[0].name, "--state-dir", str(state_dir),
             "--join-token", "berth_join_x"],
            environ={},
        )  # fmt: skip
        fleet_task = asyncio.create_task(
            run_fleet(profiles, template, connect_rate=rate, progress_interval=0.1)
        )
        names = [p.name for p in profiles]
        try:
            deadline = time.monotonic() + 20
            while not plane.done(names):
                if fleet_task.done():
                    fleet_task.result()  # raises what broke it
                assert time.monotonic() < deadline, (
                    f"not every node reported its replicas Running: {plane.running}, beats {plane.heartbeats}"
                )
                await asyncio.sleep(0.02)
        finally:
            fleet_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await fleet_task


def test_hollow_fleet_enrolls_connects_runs_and_reuses_credentials(tmp_path, monkeypatch, capsys):
    enrolled: list[str] = []
    enrolled_at: list[float] = []

    def fake_enroll(server, join_token, name, labels, *, url):
        enrolled.append(name)
        enrolled_at.append(time.monotonic())
        return Credential(server=server, node=name, credential=f"cred-{name}")

    monkeypatch.setattr(enroll_module, "enroll", fake_enroll)
    profiles = fleet(12, prefix="t-", seed=3)
    names = [p.name for p in profiles]

    plane = StandInControlPlane()
    port = free_port()
    asyncio.run(run_against(plane, profiles, tmp_path, port=port, rate=50))
    assert sorted(enrolled) == names
    for profile in profiles:
        hello = plane.hellos[profile.name]
        assert hello["engine_version"] == "hollow"
        assert hello["capacity"] == {"cpu": profile.cpu_millis, "memory": profile.memory_bytes}
        assert hello["labels"] == profile.labels
        assert hello["images"] == list(profile.images)
    # At most 50 starts a second: 12 nodes take 11 intervals of 20 ms (less a thread's start-up).
    assert max(enrolled_at) - min(enrolled_at) >= 0.15
    assert "12/12 connected" in capsys.readouterr().err

    # A rerun against the same server over the same state directory: the stored credentials.
    again = StandInControlPlane()
    asyncio.run(run_against(again, profiles, tmp_path, port=port, rate=1000))
    assert sorted(enrolled) == names
    assert sorted(again.hellos) == names


def test_fleet_is_a_deterministic_mix():
    profiles = fleet(400, prefix="hollow-", seed=1)
    assert profiles == fleet(400, prefix="hollow-", seed=1)
    assert profiles != fleet(400, prefix="hollow-", seed=2)
    assert profiles[0].name == "hollow-00001" and profiles[-1].name == "hollow-00400"
    assert all(DNS_LABEL.match(p.name) for p in profiles)
    assert {p.cpu_millis for p in profiles} == {2000, 4000, 8000, 16000}
    assert {p.labels["zone"] for p in profiles} == {"a", "b", "c", "d"}
    assert {p.labels["disk"] for p in profiles} == {"ssd", "hdd"}
    assert {p.labels["tier"] for p in profiles} == {"web", "batch", "general"}
    assert all(p.images[0] == BASE_IMAGE for p in profiles)
    assert len({p.images for p in profiles}) > 50  # image locality has something to tell apart


def test_processes_split_the_fleet_and_stop_together(tmp_path):
    """`--processes 2`: two processes serve the fleet between them (each node once); a
    SIGTERM to the first stops the other too."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    from pathlib import Path

    from agent.credential import save_credential

    profiles = fleet(6, prefix="s-", seed=5)
    names = [p.name for p in profiles]
    port = free_port()
    server = f"http://127.0.0.1:{port}"
    for name in names:  # enrolled before: no join token needed
        save_credential(tmp_path / name, Credential(server=server, node=name, credential=f"cred-{name}"))
    plane = StandInControlPlane()
    connections: Counter[str] = Counter()
    serving = plane.serve

    async def counting(ws, node):
        connections[node] += 1
        await serving(ws, node)

    plane.serve = counting
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def run_plane():
        async with serve(plane.handler, "127.0.0.1", port, process_request=plane.process_request):
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(run_plane(),), daemon=True)
    thread.start()
    root = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent.hollow", "--server", server, "--count", "6", "--prefix", "s-",
         "--seed", "5", "--state-dir", str(tmp_path), "--processes", "2", "--progress-interval", "0.2"],
        cwd=root, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not plane.done(names):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, f"not all nodes ran: {plane.running}"
            time.sleep(0.05)
        children = [
            int(pid)
            for task in os.listdir(f"/proc/{proc.pid}/task")
            for pid in Path(f"/proc/{proc.pid}/task/{task}/children").read_text().split()
        ]
        assert len(children) == 1
        assert dict(connections) == dict.fromkeys(names, 1)  # each node in one process only
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        deadline = time.monotonic() + 10
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{children[0]}").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
