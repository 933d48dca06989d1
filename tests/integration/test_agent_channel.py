"""The agents' WebSocket, through the real ASGI application and the Redis channel layer."""

import asyncio
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from nodes.models import Node
from nodes.services import do_create_join_token, do_enroll_node
from orchestrator import services
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Deployment, Namespace, Replica

pytestmark = pytest.mark.django_db(transaction=True)

HELLO = {
    "type": "hello",
    "agent_version": "test",
    "engine_version": "20.10",
    "capacity": {"cpu": 2000, "memory": 2**31},
    "labels": {"zone": "a"},
}


def enroll(name="h1"):
    _, join = do_create_join_token(None)
    return do_enroll_node(join, name, {})


async def until_true(condition, timeout=5.0):
    """Wait for a database condition the consumer's work makes true, with a deadline."""
    check = database_sync_to_async(condition)
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {condition.__name__}"
        await asyncio.sleep(0.02)


def run(coroutine_fn, *args):
    return async_to_sync(coroutine_fn)(*args)


def communicator(credential):
    headers = [(b"authorization", f"Bearer {credential}".encode())] if credential else []
    return WebsocketCommunicator(application, "/ws/agent/", headers=headers)


@pytest.mark.parametrize("credential", [None, "berth_node_wrong", "not-even-a-token"])
def test_an_agent_with_a_bad_credential_is_refused(credential):
    enroll()

    async def scenario():
        ws = communicator(credential)
        connected, _ = await ws.connect()
        await ws.disconnect()
        return connected

    assert run(scenario) is False
    assert Node.objects.get().status == Node.Status.NOT_READY


def test_a_rotated_credential_stops_working():
    _, old = enroll()
    enroll()  # the same name again: a new credential

    async def scenario():
        ws = communicator(old)
        connected, _ = await ws.connect()
        await ws.disconnect()
        return connected

    assert run(scenario) is False


def test_hello_makes_the_node_ready_and_it_receives_its_desired_set():
    node, credential = enroll()
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 2}, None
    )
    node.status = Node.Status.READY
    node.save()
    reconcile_deployment(deployment.pk)
    names = set(Replica.objects.values_list("name", flat=True))

    async def scenario():
        ws = communicator(credential)
        connected, _ = await ws.connect()
        assert connected
        await ws.send_json_to(HELLO)
        welcome = await ws.receive_json_from(timeout=5)
        desired = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return welcome, desired

    welcome, desired = run(scenario)
    assert welcome["type"] == "welcome" and welcome["node"] == "h1" and welcome["heartbeat_interval"] > 0
    assert desired["type"] == "desired" and desired["generation"] >= 1
    assert {r["name"] for r in desired["replicas"]} == names
    entry = desired["replicas"][0]
    assert entry["namespace"] == "default" and entry["deployment"] == "web" and entry["image"] == "busybox:1"
    node.refresh_from_db()
    assert node.capacity_cpu == 2000 and node.agent_labels == {"zone": "a"} and node.engine_version == "20.10"
    # The connection closed: the node is NotReady at once, its replicas Unknown until it reports again.
    assert node.status == Node.Status.NOT_READY and node.status_reason == "AgentDisconnected"


@pytest.mark.parametrize("features", [["desired.partial"], []], ids=["partial", "before-partial"])
def test_partial_frames_go_to_agents_that_take_them_and_a_request_gets_the_full_set(features):
    node, credential = enroll()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY)
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 2}, None
    )
    reconcile_deployment(deployment.pk)

    def scale_up(applied):
        # As if the agent had reported the generation it applied, then a scale-up.
        Node.objects.filter(pk=node.pk).update(observed_generation=applied)
        services.do_scale_deployment(Deployment.objects.get(pk=deployment.pk), 3, None)
        reconcile_deployment(deployment.pk)  # dispatches a partial frame through the channel layer

    async def scenario():
        ws = communicator(credential)
        connected, _ = await ws.connect()
        assert connected
        await ws.send_json_to({**HELLO, "features": features})
        await ws.receive_json_from(timeout=5)  # welcome
        first = await ws.receive_json_from(timeout=5)
        await database_sync_to_async(scale_up)(first["generation"])
        pushed = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "desired.request", "generation": pushed["generation"], "missing": 1})
        again = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        return first, pushed, again

    first, pushed, again = run(scenario)
    names = set(Replica.objects.values_list("name", flat=True))
    assert "partial" not in first and len(first["replicas"]) == 2  # on hello: the full set
    if features:
        assert pushed["partial"] is True and {n for _, n in pushed["names"]} == names
        new = names - {e["name"] for e in first["replicas"]}
        assert {e["name"] for e in pushed["replicas"]} == new and len(new) == 1
    else:  # an agent from before partial frames gets the whole set instead
        assert "partial" not in pushed and {e["name"] for e in pushed["replicas"]} == names
    assert "partial" not in again and {e["name"] for e in again["replicas"]} == names
    assert again["generation"] > pushed["generation"] > first["generation"]


def test_status_reports_update_replicas_and_finish_terminations():
    node, credential = enroll()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY)
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 2}, None
    )
    reconcile_deployment(deployment.pk)
    first, second = Replica.objects.order_by("name")

    def report(*entries, generation=1):
        return {"type": "status", "generation": generation, "full": True, "replicas": list(entries)}

    def running(r):
        return {
            "name": r.name,
            "namespace": "default",
            "container_id": "c-" + r.name,
            "phase": "Running",
            "exit_code": None,
            "message": "",
            "restart_count": 0,
            "started_at": "2026-11-22T11:00:00Z",
            "finished_at": None,
        }

    async def scenario(done, *frames):
        ws = communicator(credential)
        await ws.connect()
        await ws.send_json_to(HELLO)
        await ws.receive_json_from(timeout=5)  # welcome
        await ws.receive_json_from(timeout=5)  # desired
        for frame in frames:
            await ws.send_json_to(frame)
        await until_true(done)
        await ws.disconnect()

    def reported_running():
        return Replica.objects.filter(phase="Running", container_id__startswith="c-").count() == 2

    run(
        scenario,
        reported_running,
        report(running(first), running(second)),
        {"type": "status", "replicas": "garbage"},
        {"type": "nonsense"},
    )
    first.refresh_from_db()
    assert first.container_id == "c-" + first.name and first.started_at is not None
    assert Node.objects.get().observed_generation == 1

    Deployment.objects.filter(pk=deployment.pk).update(replicas=1)
    reconcile_deployment(deployment.pk)
    terminating = Replica.objects.get(phase=Replica.Phase.TERMINATING)
    survivor = Replica.objects.exclude(pk=terminating.pk).get()
    # The agent stopped it: its next full report no longer lists it, so the row goes.
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY)
    run(scenario, lambda: Replica.objects.count() == 1, report(running(survivor), generation=3))
    assert list(Replica.objects.values_list("name", flat=True)) == [survivor.name]


def beat(node_id, timestamp):
    """A heartbeat as the agent consumer records it, written through at once."""
    from nodes import heartbeats

    async def record_and_flush():
        await heartbeats.record(node_id, timestamp)
        await heartbeats.flush()

    async_to_sync(record_and_flush)()


def test_heartbeats_keep_a_node_ready_and_silence_makes_it_not_ready(settings, monkeypatch):
    from datetime import timedelta

    from django.utils import timezone

    from nodes.controllers import monitor
    from nodes.controllers.monitor import monitor_nodes

    dispatched = []
    monkeypatch.setattr(monitor, "dispatch_nodes", lambda ids, **kwargs: dispatched.append((ids, kwargs)))

    node, _ = enroll()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY, last_heartbeat=timezone.now())
    beat(node.pk, time.time())
    assert monitor_nodes() == []
    later = timezone.now() + timedelta(seconds=settings.NODE_GRACE_SECONDS + 1)
    assert monitor_nodes(now=later) == ["h1"]
    node.refresh_from_db()
    assert node.status == Node.Status.NOT_READY and node.status_reason == "HeartbeatTimeout"
    assert "no heartbeat" in node.status_message
    assert monitor_nodes(now=later) == []  # a rerun finds nothing new

    # The agent was only frozen: its connection is still the current one and it beats again.
    Node.objects.filter(pk=node.pk).update(session=uuid.uuid4())
    beat(node.pk, later.timestamp() + 1)
    monitor_nodes(now=later + timedelta(seconds=1))
    node.refresh_from_db()
    assert node.status == Node.Status.READY
    # Its replicas' states were set Unknown: the whole set goes, so the agent reports them all.
    assert dispatched == [([node.pk], {"full": True})]


def fleet_of(size: int) -> None:
    """Redis holds heartbeats of `size` nodes (the fleet size web processes scale by)."""
    from nodes import heartbeats

    client = heartbeats._client()
    client.delete(heartbeats.KEY)
    if size:
        client.hset(heartbeats.KEY, mapping={f"other-{i}": "1" for i in range(size)})


async def grown_fleet(size: int, node_id: int):
    """The fleet is `size` nodes, `node_id` one of them; this web process learns it at its
    next flush (the node's own beats, flushed before or after, fall on the same entry)."""
    from nodes import heartbeats

    await database_sync_to_async(fleet_of)(size - 1)
    await heartbeats.record(node_id, time.time())  # a beat, and the flush that counts them
    await heartbeats.flush()


@pytest.fixture
def scaled_heartbeats(settings):
    settings.AGENT_HEARTBEAT_SECONDS = 1.0
    settings.NODE_GRACE_SECONDS = 30.0
    settings.AGENT_MAX_HEARTBEATS_PER_SECOND = 10.0  # 1 s up to 10 nodes, 10 s (grace / 3) from 100
    yield
    from nodes import heartbeats

    fleet_of(0)
    heartbeats._fleet_size = 0  # as this process last saw it


async def welcomed(ws, features):
    connected, _ = await ws.connect()
    assert connected
    await ws.send_json_to({**HELLO, "features": features})
    welcome = await ws.receive_json_from(timeout=5)
    assert (await ws.receive_json_from(timeout=5))["type"] == "desired"  # the full set, on connect
    return welcome


def test_a_growing_fleet_is_told_to_heartbeat_less_often(scaled_heartbeats):
    node, credential = enroll()

    async def scenario():
        ws = communicator(credential)
        await grown_fleet(1, node.pk)
        welcome = await welcomed(ws, ["settings"])
        await grown_fleet(41, node.pk)  # 41 nodes at 10 beats a second: every 4.1 s
        await ws.send_json_to({"type": "heartbeat"})
        first = await ws.receive_json_from(timeout=5)
        await grown_fleet(500, node.pk)  # every 50 s for 10 / s: capped at a third of the grace
        await ws.send_json_to({"type": "heartbeat"})
        second = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "heartbeat"})  # nothing changed: nothing to tell
        quiet = await ws.receive_nothing(timeout=0.3)
        await ws.disconnect()
        return welcome, first, second, quiet

    welcome, first, second, quiet = run(scenario)
    assert welcome["heartbeat_interval"] == 1.0
    assert first == {"type": "settings", "heartbeat_interval": 4.1}
    assert second == {"type": "settings", "heartbeat_interval": 10.0}
    assert quiet


def test_an_agent_without_the_settings_feature_keeps_its_interval(scaled_heartbeats):
    node, credential = enroll()

    async def scenario():
        ws = communicator(credential)
        await grown_fleet(41, node.pk)
        welcome = await welcomed(ws, [])
        await grown_fleet(80, node.pk)
        await ws.send_json_to({"type": "heartbeat"})
        quiet = await ws.receive_nothing(timeout=0.3)
        await ws.disconnect()
        return welcome, quiet

    welcome, quiet = run(scenario)
    assert welcome["heartbeat_interval"] == 4.1
    assert quiet


def test_a_status_frame_counts_as_a_heartbeat():
    from nodes import heartbeats

    node, credential = enroll()

    def heartbeat_recorded():
        return node.pk in heartbeats.read_all()

    async def scenario():
        ws = communicator(credential)
        welcome = await welcomed(ws, [])
        await until_true(heartbeat_recorded)  # the hello's
        await database_sync_to_async(heartbeats.forget)(node.pk)
        await ws.send_json_to({"type": "status", "generation": 1, "full": True, "replicas": []})
        await until_true(heartbeat_recorded)
        await ws.disconnect()
        return welcome

    assert "status.heartbeat" in run(scenario)["features"]


def test_a_web_process_knows_the_fleet_size_from_its_start_and_through_a_redis_loss(scaled_heartbeats):
    from nodes import heartbeats

    node, _ = enroll()
    fleet_of(30)
    heartbeats._fleet_size = 0  # a web process starting
    run(heartbeats.restart_tracking, time.time())
    assert heartbeats.interval() == 3.0  # its first agents are welcomed as the fleet calls for

    # Redis restarts empty: the first flush after it sees one beat, not a fleet of one.
    client = heartbeats._client()
    client.delete(heartbeats.KEY, heartbeats.PRESENCE_KEY)
    epoch = heartbeats.data_epoch()
    beat(node.pk, time.time())
    assert heartbeats.data_epoch() == epoch + 1  # the loss was noticed
    assert heartbeats.interval() == 3.0
    fleet_of(59)
    beat(node.pk, time.time())
    assert heartbeats.interval() == 6.0  # an ordinary flush: the size as counted (59 and h1)


def test_a_frame_that_is_not_json_is_ignored_and_the_session_goes_on(caplog):
    from nodes import heartbeats

    node, credential = enroll()

    def heartbeat_recorded():
        return node.pk in heartbeats.read_all()

    async def scenario():
        ws = communicator(credential)
        await welcomed(ws, [])
        await until_true(heartbeat_recorded)  # the hello's
        await database_sync_to_async(heartbeats.forget)(node.pk)
        await ws.send_to(text_data="{not json")
        await ws.send_to(text_data="[" * 100_000)  # too deep for the parser
        await ws.send_to(bytes_data=b"\x00\x01")
        await ws.send_json_to({"type": "heartbeat"})
        await until_true(heartbeat_recorded)  # still served after both
        await ws.disconnect()

    run(scenario)
    assert f"node {node.name} sent a frame that is not JSON; ignored" in caplog.text
    assert f"node {node.name} sent a binary frame; ignored" in caplog.text


class BreakableLayer:
    """The real channel layer, whose receive fails once `broken` is set (fault injection)."""

    def __init__(self, layer):
        self._layer = layer
        self.broken = asyncio.Event()

    def __getattr__(self, name):
        return getattr(self._layer, name)

    async def receive(self, channel):
        real = asyncio.ensure_future(self._layer.receive(channel))
        broken = asyncio.ensure_future(self.broken.wait())
        try:
            done, _ = await asyncio.wait({real, broken}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when this receive is cancelled: nothing left waiting behind it
            broken.cancel()
            if not real.done():
                real.cancel()
        if real in done:
            return real.result()
        raise ConnectionError("injected: the channel layer cannot receive")


def test_a_session_whose_channel_layer_fails_ends_and_frames_keep_their_order(monkeypatch):
    """The consumer's own loop (web/consumers/agent.py): socket frames and channel-layer
    messages are handled one at a time in order, and a failing channel layer ends the
    session (its agent reconnects) instead of leaving it deaf to its desired sets."""
    from channels.layers import get_channel_layer

    import web.consumers.agent as agent_consumer

    node, credential = enroll()

    async def scenario():
        layer = BreakableLayer(get_channel_layer())
        monkeypatch.setattr(agent_consumer, "get_channel_layer", lambda alias="default": layer)
        ws = communicator(credential)
        connected, _ = await ws.connect()
        assert connected
        await ws.send_json_to(HELLO)
        assert (await ws.receive_json_from())["type"] == "welcome"
        first = await ws.receive_json_from()
        assert first["type"] == "desired"
        for step in range(1, 4):
            frame = {"type": "desired", "generation": first["generation"] + step, "replicas": []}
            await layer.group_send(f"node.{node.pk}", {"type": "desired.push", "frame": frame})
            await ws.send_json_to({"type": "heartbeat"})
        generations = [(await ws.receive_json_from())["generation"] for _ in range(3)]
        assert generations == [first["generation"] + step for step in range(1, 4)]
        layer.broken.set()
        with pytest.raises(ConnectionError, match="injected"):
            await ws.receive_output(timeout=5)

    run(scenario)
