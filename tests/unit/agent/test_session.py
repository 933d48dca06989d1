"""The session against a real WebSocket server (websockets), with the engine side stubbed.

Checks what the control plane sees: the Bearer header, hello first, status after a desired
set, heartbeats; and that a refused credential leads to a new enrollment when a join token
is configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json

import pytest
from websockets.asyncio.server import serve

from agent import enroll as enroll_module
from agent import session as session_module
from agent.config import load_config
from agent.credential import Credential, save_credential
from agent.enroll import Enroller
from agent.reconnect import ReconnectDelay
from agent.reporter import StatusReporter
from agent.runtime import EngineInfo
from agent.session import Session
from agent.status import Phase, ReplicaStatus

DESIRED = {
    "type": "desired",
    "generation": 3,
    "replicas": [
        {
            "name": "a",
            "namespace": "default",
            "deployment": "web",
            "revision": "r1",
            "image": "berth-test/busybox:1",
            "command": ["sleep", "3600"],
            "env": {},
            "ports": [],
            "resources": {"cpu_millis": None, "memory_bytes": None},
        }
    ],
}


class StubReconciler:
    node = "h1"
    ready = True

    def __init__(self, reporter):
        self.generation = 0
        self.desired = None
        self.reporter = reporter

    def desired_replica(self, key):
        return next((r for r in self.desired or () if r.key == key), None)

    def apply_desired(self, generation, replicas):
        if generation < self.generation:
            return False
        self.generation, self.desired = generation, replicas
        self.reporter.mark_dirty()
        return True

    def statuses(self):
        return [ReplicaStatus(r.name, r.namespace, "cid", Phase.RUNNING) for r in self.desired or ()]


class StubRuntime:
    async def engine_info(self):
        return EngineInfo("20.10.24", 2000, 1 << 30)


class ControlPlane:
    """Accepts one credential; records every frame it receives."""

    def __init__(self, accepted: str):
        self.accepted = accepted
        self.frames: list[dict] = []
        self.headers: list[str | None] = []
        self.extensions: list[str | None] = []  # what each connection offered
        self.refused = 0
        self.got_status = asyncio.Event()

    def process_request(self, connection, request):
        header = request.headers.get("Authorization")
        self.headers.append(header)
        self.extensions.append(request.headers.get("Sec-WebSocket-Extensions"))
        if header != f"Bearer {self.accepted}":
            self.refused += 1
            return connection.respond(403, "bad credential\n")
        return None

    heartbeat_interval = 0.1  # told in the welcome
    features: tuple[str, ...] = ()  # ... with these

    async def handler(self, ws):
        """Records every frame; answers `hello` with a welcome and the desired set (generation
        3, replica a); any other frame goes to `react`."""
        async for message in ws:
            frame = json.loads(message)
            self.frames.append(frame)
            if frame["type"] == "hello":
                welcome = {
                    "type": "welcome",
                    "node": "h1",
                    "heartbeat_interval": self.heartbeat_interval,
                    "features": list(self.features),
                }
                await ws.send(json.dumps(welcome))
                await ws.send(json.dumps(DESIRED))
            else:
                await self.react(ws, frame)

    async def react(self, ws, frame: dict) -> None:
        if frame["type"] == "status" and frame["generation"] == 3:
            self.got_status.set()


def entry(name: str) -> dict:
    return {**DESIRED["replicas"][0], "name": name}


class PartialControlPlane(ControlPlane):
    """Sends a full set, a partial one it can complete, then one naming a replica it has no
    entry for; answers the agent's request with the full set."""

    heartbeat_interval = 5

    def __init__(self, accepted: str):
        super().__init__(accepted)
        self.done = asyncio.Event()

    async def react(self, ws, frame: dict) -> None:
        if frame["type"] == "status" and frame["generation"] == 3:
            names = [["default", "a"], ["default", "b"]]
            partial = {"type": "desired", "generation": 4, "partial": True, "names": names}
            await ws.send(json.dumps({**partial, "replicas": [entry("b")]}))
        elif frame["type"] == "status" and frame["generation"] == 4:
            names = [["default", "b"], ["default", "c"]]  # c was in a frame that got lost
            partial = {"type": "desired", "generation": 5, "partial": True, "names": names}
            await ws.send(json.dumps({**partial, "replicas": []}))
        elif frame["type"] == "desired.request":
            full = {"type": "desired", "generation": 6, "replicas": [entry("b"), entry("c")]}
            await ws.send(json.dumps(full))
        elif frame["type"] == "status" and frame["generation"] == 6:
            self.done.set()


def test_partial_sets_use_the_entries_the_agent_has_and_a_gap_asks_for_the_full_set(tmp_path):
    plane = PartialControlPlane(accepted="berth_node_old")
    asyncio.run(run_session(tmp_path, plane, join_token=None, until=plane.done.wait))
    assert "desired.partial" in plane.frames[0]["features"]
    statuses = {
        f["generation"]: [r["name"] for r in f["replicas"]] for f in plane.frames if f["type"] == "status"
    }
    assert statuses[4] == ["a", "b"]  # a from generation 3, b carried
    assert 5 not in statuses  # c unknown: generation 5 not applied, b kept running
    requests = [f for f in plane.frames if f["type"] == "desired.request"]
    assert requests == [{"type": "desired.request", "generation": 5, "missing": 1}]
    assert statuses[6] == ["b", "c"]


def stub_session(tmp_path, argv: list[str]) -> Session:
    """A session of node h1 (credential berth_node_old) over the stubs, reconnecting within 0.05 s."""
    config = load_config(argv, environ={})
    save_credential(tmp_path, Credential(config.server, "h1", "berth_node_old"))
    reporter = StatusReporter()
    return Session(
        config,
        Enroller(config),
        StubReconciler(reporter),
        reporter,
        StubRuntime(),
        EngineInfo("?", 0, 0),
        delay=ReconnectDelay(base=0.01, cap=0.05),
    )


async def run_session(tmp_path, plane: ControlPlane, *, join_token: str | None, until):
    async with serve(plane.handler, "127.0.0.1", 0, process_request=plane.process_request) as server:
        port = server.sockets[0].getsockname()[1]
        argv = ["--server", f"http://127.0.0.1:{port}", "--name", "h1", "--state-dir", str(tmp_path)]
        if join_token:
            argv += ["--join-token", join_token]
        task = asyncio.create_task(stub_session(tmp_path, argv).run_forever())
        try:
            await asyncio.wait_for(until(), timeout=10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def test_hello_desired_status_and_heartbeats(tmp_path):
    plane = ControlPlane(accepted="berth_node_old")

    async def until():
        await plane.got_status.wait()
        while sum(f["type"] == "heartbeat" for f in plane.frames) < 2:
            await asyncio.sleep(0.05)

    asyncio.run(run_session(tmp_path, plane, join_token=None, until=until))
    assert plane.headers[0] == "Bearer berth_node_old"
    assert plane.frames[0]["type"] == "hello"
    assert plane.frames[0]["capacity"] == {"cpu": 2000, "memory": 1 << 30}
    statuses = [f for f in plane.frames if f["type"] == "status" and f["generation"] == 3]
    assert statuses[0]["full"] is True
    assert statuses[0]["replicas"][0]["name"] == "a"


class SettingsControlPlane(ControlPlane):
    """Welcomes with an interval far longer than the test; once the agent reports (its
    heartbeat is waiting by then), a settings frame without an interval, then a short one."""

    heartbeat_interval = 600
    told = False

    async def react(self, ws, frame: dict) -> None:
        if frame["type"] == "status" and not self.told:
            self.told = True
            await ws.send(json.dumps({"type": "settings"}))  # nothing new: unchanged
            await ws.send(json.dumps({"type": "settings", "heartbeat_interval": 0.05}))


def test_a_settings_frame_changes_the_heartbeat_interval(tmp_path):
    plane = SettingsControlPlane(accepted="berth_node_old")

    async def until():
        while sum(f["type"] == "heartbeat" for f in plane.frames) < 3:
            await asyncio.sleep(0.02)

    # Within the 10 s the session runs at most: at the welcome's 600 s there would be none,
    # and the wait under way when the settings came was one of 600 s.
    asyncio.run(run_session(tmp_path, plane, join_token=None, until=until))
    assert "settings" in plane.frames[0]["features"]
    first_status = next(i for i, f in enumerate(plane.frames) if f["type"] == "status")
    assert all(f["type"] != "heartbeat" for f in plane.frames[:first_status])


class BusyControlPlane(ControlPlane):
    """Keeps the agent reporting: answers each of its status frames with a newer desired set,
    ROUNDS times (a frame every debounce, far more often than the heartbeat interval), then
    goes quiet."""

    heartbeat_interval = 1.0
    ROUNDS = 50  # at least 2.5 s (the debounce is 50 ms): two beats or more unless counted

    def __init__(self, accepted: str, features: tuple[str, ...]):
        super().__init__(accepted)
        self.features = features
        self.quiet = asyncio.Event()
        self.quiet_from = 0  # the index of the last status frame asked for

    async def react(self, ws, frame: dict) -> None:
        if frame["type"] != "status":
            return
        if frame["generation"] < DESIRED["generation"] + self.ROUNDS:
            await ws.send(json.dumps({**DESIRED, "generation": frame["generation"] + 1}))
        elif not self.quiet.is_set():
            self.quiet_from = len(self.frames)
            self.quiet.set()


@pytest.mark.parametrize("counted", [True, False], ids=["counted", "not-counted"])
def test_status_frames_stand_for_heartbeats_when_the_control_plane_counts_them(tmp_path, counted):
    plane = BusyControlPlane("berth_node_old", features=(session_module.STATUS_BEATS,) if counted else ())

    async def until():
        await plane.quiet.wait()
        while not any(f["type"] == "heartbeat" for f in plane.frames[plane.quiet_from :]):
            await asyncio.sleep(0.02)

    asyncio.run(run_session(tmp_path, plane, join_token=None, until=until))
    first_status = next(i for i, f in enumerate(plane.frames) if f["type"] == "status")
    busy = plane.frames[first_status : plane.quiet_from]
    assert sum(f["type"] == "status" for f in busy) >= BusyControlPlane.ROUNDS
    beats = sum(f["type"] == "heartbeat" for f in busy)
    # Counted: none while frames flow, and they come back once it is quiet (`until`).
    assert beats == 0 if counted else beats >= 2


def test_refused_credential_with_join_token_enrolls_again(tmp_path, monkeypatch):
    plane = ControlPlane(accepted="berth_node_new")
    calls = []

    def fake_enroll(server, join_token, name, labels, *, url):
        calls.append((join_token, name))
        return Credential(server=server, node=name, credential="berth_node_new")

    monkeypatch.setattr(enroll_module, "enroll", fake_enroll)
    asyncio.run(run_session(tmp_path, plane, join_token="berth_join_x", until=plane.got_status.wait))
    assert calls == [("berth_join_x", "h1")]
    assert plane.headers[:2] == ["Bearer berth_node_old", "Bearer berth_node_new"]
    assert (tmp_path / "credential.json").read_text().count("berth_node_new") == 1


def test_refused_credential_without_join_token_says_what_to_do(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(session_module, "REFUSED_RETRY_SECONDS", 0.05)
    plane = ControlPlane(accepted="something-else")

    async def until():
        while plane.refused < 3:
            await asyncio.sleep(0.02)

    asyncio.run(run_session(tmp_path, plane, join_token=None, until=until))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors and "--join-token" in errors[0]
    assert not any("berth_node_old" in r.getMessage() for r in caplog.records)


@pytest.fixture(autouse=True)
def _quiet_websockets(caplog):
    caplog.set_level("INFO")


def test_the_agent_offers_no_per_message_compression(tmp_path):
    """Its frames are small (heartbeats, partial sets and statuses): compressing them cost
    the control plane and the agent more CPU than it saved bytes, and each connection kept
    zlib's state on both ends (about 40 KiB per agent on the hollow fleet)."""
    plane = ControlPlane(accepted="berth_node_old")
    asyncio.run(run_session(tmp_path, plane, join_token=None, until=plane.got_status.wait))
    assert plane.extensions == [None]


class FullControlPlane(ControlPlane):
    """Answers the first BUSY handshakes with `status` and a Retry-After, then lets the agent in."""

    BUSY = 2

    def __init__(self, accepted: str, status: int, retry_after: str | None):
        super().__init__(accepted)
        self.status, self.retry_after = status, retry_after
        self.knocks: list[float] = []
        self.credentials: list[str | None] = []

    def process_request(self, connection, request):
        self.knocks.append(asyncio.get_running_loop().time())
        self.credentials.append(request.headers.get("Authorization"))
        if len(self.knocks) <= self.BUSY:
            response = connection.respond(self.status, "too many agents are joining\n")
            if self.retry_after is not None:
                response.headers["Retry-After"] = self.retry_after
            return response
        return super().process_request(connection, request)


@pytest.mark.parametrize(("status", "retry_after", "floor"), [(503, "0.4", 0.2), (429, None, 0.5)])
def test_a_busy_control_plane_is_tried_again_after_its_retry_after(
    tmp_path, monkeypatch, status, retry_after, floor
):
    """The wait is the server's Retry-After (or the default) jittered, not the back-off's
    (0.01 to 0.05 s here), and the credential is kept (no enrollment)."""
    monkeypatch.setattr(session_module, "BUSY_DEFAULT_WAIT", 1.0)
    plane = FullControlPlane("berth_node_old", status, retry_after)
    asyncio.run(run_session(tmp_path, plane, join_token="berth_join_x", until=plane.got_status.wait))
    assert len(plane.knocks) == FullControlPlane.BUSY + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(plane.knocks)]
    assert all(gap >= floor for gap in gaps), gaps  # half the Retry-After at least
    assert plane.credentials == ["Bearer berth_node_old"] * 3


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("0", 0.0), (None, 5.0), ("Wed, 21 Oct 2026 07:28:00 GMT", 5.0), ("-2", 5.0),
     ("nan", 5.0), ("3600", 30.0), ("inf", 30.0)],
)  # fmt: skip
def test_busy_wait_is_the_retry_after_jittered_and_bounded(header, seconds):
    assert session_module.busy_wait(header, rng=lambda: 0.0) == pytest.approx(seconds * 0.5)
    assert session_module.busy_wait(header, rng=lambda: 0.999) == pytest.approx(seconds * 1.499)


def test_a_control_plane_that_does_not_answer_the_handshake_is_not_knocked_at_again_at_once(
    tmp_path, monkeypatch
):
    """Connected, but no HTTP answer within the open timeout (an overloaded control plane's
    backlog): the agent waits as for a busy answer, not the back-off's short draw."""
    monkeypatch.setattr(session_module, "OPEN_TIMEOUT", 0.2)
    monkeypatch.setattr(session_module, "BUSY_DEFAULT_WAIT", 0.6)  # waits 0.3 to 0.9 s
    knocks: list[float] = []
    enough = asyncio.Event()

    async def scenario():
        async def mute(reader, writer):
            knocks.append(asyncio.get_running_loop().time())
            if len(knocks) == 3:
                enough.set()
            await reader.read()  # never answers; ends when the agent gives up
            writer.close()

        server = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        argv = ["--server", f"http://127.0.0.1:{port}", "--name", "h1", "--state-dir", str(tmp_path)]
        task = asyncio.create_task(stub_session(tmp_path, argv).run_forever())
        try:
            await asyncio.wait_for(enough.wait(), timeout=10)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            server.close()

    asyncio.run(scenario())
    gaps = [later - earlier for earlier, later in itertools.pairwise(knocks)]
    assert all(gap >= 0.2 + 0.3 for gap in gaps), gaps  # the timeout, then half the default wait


class ClosingControlPlane(ControlPlane):
    """A server without HTTP denial: accepts the first BUSY connections and closes them at once
    with 1013 (try again later), then lets the agent in."""

    BUSY = 2

    def __init__(self, accepted: str):
        super().__init__(accepted)
        self.knocks: list[float] = []

    async def handler(self, ws):
        self.knocks.append(asyncio.get_running_loop().time())
        if len(self.knocks) <= self.BUSY:
            await ws.close(1013, "try again later")
            return
        await super().handler(ws)


def test_a_close_with_try_again_later_before_the_welcome_is_a_busy_answer(tmp_path, monkeypatch):
    monkeypatch.setattr(session_module, "BUSY_DEFAULT_WAIT", 1.0)  # waits 0.5 to 1.5 s
    plane = ClosingControlPlane("berth_node_old")
    asyncio.run(run_session(tmp_path, plane, join_token=None, until=plane.got_status.wait))
    gaps = [later - earlier for earlier, later in itertools.pairwise(plane.knocks)]
    assert len(plane.knocks) == ClosingControlPlane.BUSY + 1
    assert all(gap >= 0.5 for gap in gaps), gaps  # not the back-off's 0.01 to 0.05 s
