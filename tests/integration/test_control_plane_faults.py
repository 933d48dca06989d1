"""Control-plane faults, one mechanism at a time (the e2e versions are in
tests/e2e/test_control_plane_faults.py): PostgreSQL errors injected into the agent consumer,
Redis data dropped under the node monitor and the channel layer, a worker "dying" between its
commit and its dispatch."""

import asyncio
import time
import uuid
from datetime import timedelta
from unittest import mock

import pytest
import redis
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import OperationalError
from django.utils import timezone

from nodes import heartbeats
from nodes.controllers.monitor import monitor_nodes
from nodes.models import Node
from orchestrator import services, tasks
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Namespace, Replica
from tests.integration.test_agent_channel import HELLO, communicator, enroll, run, until_true

pytestmark = pytest.mark.django_db(transaction=True)


def _redis():
    return redis.Redis.from_url(settings.REDIS_URL)


def _deployment(replicas=2, name="web"):
    return services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": name, "image": "busybox:1", "replicas": replicas},
        None,
    )


def _report(replicas, generation=1):
    return {
        "type": "status",
        "generation": generation,
        "full": True,
        "replicas": [
            {"name": r.name, "namespace": "default", "container_id": f"c-{r.name}", "phase": "Running"}
            for r in replicas
        ],
    }


# --- PostgreSQL restarting under the agent consumer ----------------------------------------------


def test_the_agent_session_survives_a_database_outage():
    """hello and a status report meet OperationalError (PostgreSQL restarting): the socket stays
    open, the agent is welcomed and its report applied once the database answers again."""
    from nodes import sessions
    from orchestrator.controllers import node_reports

    node, credential = enroll()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY)
    deployment = _deployment()
    reconcile_deployment(deployment.pk)
    replicas = list(Replica.objects.all())
    outage = {"hello": 2, "report": 3}  # failures before the database "comes back"
    real_hello, real_report = sessions.session_hello, node_reports.apply_node_reports

    def flaky(kind, real):
        def call(*args):
            if outage[kind] > 0:
                outage[kind] -= 1
                raise OperationalError("connection refused (injected)")
            return real(*args)

        return call

    async def scenario():
        ws = communicator(credential)
        assert (await ws.connect())[0]
        await ws.send_json_to(HELLO)
        welcome = await ws.receive_json_from(timeout=10)
        desired = await ws.receive_json_from(timeout=5)
        await ws.send_json_to(_report(replicas[:1]))
        await ws.send_json_to(_report(replicas))  # newer: replaces the kept one
        await ws.send_json_to({"type": "heartbeat"})  # heartbeats go on meanwhile
        await until_true(lambda: Replica.objects.filter(phase="Running").count() == 2, timeout=15)
        assert await ws.receive_nothing(timeout=0.1)  # not closed
        await ws.disconnect()
        return welcome, desired

    with (
        mock.patch("web.consumers.agent.session_hello", flaky("hello", real_hello)),
        mock.patch("web.consumers.reports.apply_node_reports", flaky("report", real_report)),
    ):
        welcome, desired = run(scenario)
    assert welcome["type"] == "welcome" and desired["type"] == "desired"
    assert outage == {"hello": 0, "report": 0}
    assert {r.container_id for r in Replica.objects.all()} == {f"c-{r.name}" for r in replicas}


@pytest.mark.parametrize(("code", "status"), [(1012, Node.Status.READY), (1000, Node.Status.NOT_READY)])
def test_a_web_server_shutting_down_leaves_its_nodes_ready(code, status):
    """uvicorn closes every WebSocket with 1012 when it stops: the agent did not go away, it
    reconnects within the grace, so its node stays Ready. An agent closing (1000) does not."""
    node, credential = enroll()

    async def scenario():
        ws = communicator(credential)
        await ws.connect()
        await ws.send_json_to(HELLO)
        await ws.receive_json_from(timeout=5)
        await ws.disconnect(code=code)

    run(scenario)
    assert Node.objects.get(pk=node.pk).status == status


# --- Redis losing its data --------------------------------------------------------------------


def test_after_redis_lost_the_heartbeats_every_node_gets_a_fresh_grace():
    node, _ = enroll()
    grace = timedelta(seconds=settings.NODE_GRACE_SECONDS)
    now = timezone.now()
    # The last coarse heartbeat in PostgreSQL is older than the grace; Redis forgot the rest.
    Node.objects.filter(pk=node.pk).update(
        status=Node.Status.READY, session=uuid.uuid4(), last_heartbeat=now - grace * 2
    )
    _redis().delete(heartbeats.KEY, heartbeats.EPOCH_KEY)
    with mock.patch("orchestrator.tasks.resync.apply_async") as resync:
        assert monitor_nodes(now=now) == []
        resync.assert_called_once()  # queued tasks and published sets went with Redis too
        assert resync.call_args.kwargs["kwargs"] == {"after_redis_loss": True}  # every lagging node
        assert Node.objects.get(pk=node.pk).status == Node.Status.READY
        # The rejoin allowance and a grace later, still not a single beat: it really is silent.
        allowed = grace + timedelta(seconds=heartbeats.rejoin_allowance())
        assert monitor_nodes(now=now + allowed - timedelta(seconds=1)) == []
        assert monitor_nodes(now=now + allowed + timedelta(seconds=1)) == ["h1"]
        assert resync.call_count == 1


def test_the_monitor_does_not_wait_for_a_node_another_transaction_holds():
    """Refreshing the coarse last_heartbeat skips a node a scheduler or dispatch holds
    (waiting for it, in no order, deadlocked with them); a later pass refreshes it."""
    import threading

    from django.db import connection, transaction

    node, _ = enroll()
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY, last_heartbeat=None)

    async def beat():
        await heartbeats.record(node.pk, now.timestamp())
        await heartbeats.flush()

    run(beat)
    holding, release = threading.Event(), threading.Event()

    def hold():
        try:
            with transaction.atomic():
                list(Node.objects.select_for_update().filter(pk=node.pk))
                holding.set()
                release.wait(30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        started = time.monotonic()
        assert monitor_nodes(now=now) == []
        assert time.monotonic() - started < 5  # it did not wait for the holder
        assert Node.objects.get(pk=node.pk).last_heartbeat is None
    finally:
        release.set()
        holder.join(30)
    assert monitor_nodes(now=now) == []
    assert Node.objects.get(pk=node.pk).last_heartbeat is not None


def test_each_monitor_pass_writes_the_coarse_last_heartbeat_of_a_share_of_the_nodes():
    """Not every node's every pass: a node's stored time moves once in about 30 s."""
    from nodes.controllers.monitor import _COARSE

    interval = settings.NODE_MONITOR_INTERVAL_SECONDS
    turns = max(1, round(_COARSE.total_seconds() / interval))
    now = timezone.now()
    before = now - timedelta(minutes=5)
    nodes = [
        Node.objects.create(name=f"c{i}", status=Node.Status.READY, last_heartbeat=before) for i in range(4)
    ]

    async def beat(moment):
        for node in nodes:
            await heartbeats.record(node.pk, moment.timestamp())
        await heartbeats.flush()

    written = set()
    for step in range(turns):
        moment = now + timedelta(seconds=step * interval)
        turn = int(moment.timestamp() / interval) % turns
        run(beat, moment)
        assert monitor_nodes(now=moment) == []
        moved = {
            n.pk for n in Node.objects.filter(pk__in=[n.pk for n in nodes]) if n.last_heartbeat != before
        }
        assert moved - written == {n.pk for n in nodes if n.pk % turns == turn} - written
        written |= moved
    assert written == {n.pk for n in nodes}  # every node's turn came within _COARSE


def test_a_web_process_starting_gives_every_node_a_fresh_grace():
    node, _ = enroll()
    grace = timedelta(seconds=settings.NODE_GRACE_SECONDS)
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY, last_heartbeat=now - grace * 2)
    run(heartbeats.restart_tracking, now.timestamp())  # what web.lifespan does at startup
    # Not heard since: the rejoin allowance (the whole fleet knocks again), then its grace.
    allowed = grace + timedelta(seconds=heartbeats.rejoin_allowance())
    assert monitor_nodes(now=now + allowed - timedelta(seconds=1)) == []
    assert monitor_nodes(now=now + allowed + timedelta(seconds=1)) == ["h1"]


def test_the_agent_consumer_rejoins_its_group_after_redis_forgot_it():
    """A flushed Redis forgets channel groups: a desired set published to the node's group
    reaches nobody until the consumer joins again, which it does on a heartbeat."""
    node, credential = enroll()
    layer = get_channel_layer()
    frame = {"type": "desired", "generation": 10**6, "replicas": []}

    async def publish():
        await layer.group_send(node.channel_group, {"type": "desired.push", "frame": frame})

    async def scenario():
        ws = communicator(credential)
        await ws.connect()
        await ws.send_json_to(HELLO)
        await ws.receive_json_from(timeout=5)  # welcome
        await ws.receive_json_from(timeout=5)  # desired
        await asyncio.to_thread(_forget_groups)
        await publish()
        lost = await ws.receive_nothing(timeout=0.5)
        deadline = time.monotonic() + 5
        received = None
        while received is None and time.monotonic() < deadline:
            await ws.send_json_to({"type": "heartbeat"})  # the flush notices, a later beat rejoins
            await publish()
            if not await ws.receive_nothing(timeout=0.3):
                received = await ws.receive_json_from(timeout=1)
        await ws.disconnect()
        return lost, received

    lost, received = run(scenario)
    assert lost, "with the group forgotten, the published set reached nobody"
    assert received == frame


def _forget_groups():
    """What a Redis flush does to the groups (the rest of the database is the tests')."""
    client = _redis()
    for key in client.scan_iter("asgi:group:*"):
        client.delete(key)
    client.delete(heartbeats.PRESENCE_KEY)


# --- a worker dying between its commit and its dispatch --------------------------------------


def test_resync_resends_a_desired_set_a_dead_worker_never_sent():
    """The reconcile committed its placements, then its worker died before publishing the
    nodes' new sets: the node's generation did not move, so only the replicas it never
    reported tell. The resync sends the set again."""
    node, credential = enroll()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY, session=uuid.uuid4())
    deployment = _deployment()
    with mock.patch("orchestrator.controllers.deployment.dispatch_nodes", side_effect=SystemExit):
        with pytest.raises(SystemExit):
            reconcile_deployment(deployment.pk)
    placed = set(Replica.objects.filter(node=node, phase="Pending").values_list("name", flat=True))
    assert len(placed) == 2
    assert tasks.nodes_to_resend() == []  # too recent to tell from a set in flight
    later = timezone.now() + tasks.UNDELIVERED_PLACEMENT + timedelta(seconds=1)
    assert tasks.nodes_to_resend(later) == [node.pk]

    # Once the agent reports them, nothing is owed.
    report = _report(list(Replica.objects.all()), generation=10**6)

    async def scenario():
        ws = communicator(credential)
        await ws.connect()
        await ws.send_json_to(HELLO)
        await ws.receive_json_from(timeout=5)
        await ws.receive_json_from(timeout=5)
        await ws.send_json_to(report)
        await until_true(lambda: not Replica.objects.filter(phase="Pending").exists())
        resent = await database_sync_to_async(tasks.nodes_to_resend)(later)
        await ws.disconnect()
        return resent

    assert run(scenario) == []


def test_an_agent_lagging_behind_its_generation_is_not_sent_its_set_again_at_once():
    """A node whose agent has not acknowledged its newest set is most often just busy: its
    set goes again only after a minute of silence about what it holds (at 100,000 replicas,
    resending every lagging node at each resync fed the load), or at once after Redis lost
    its data (the resync the node monitor queues then)."""
    node, _ = enroll()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY, session=uuid.uuid4())
    reconcile_deployment(_deployment().pk)  # placed and dispatched: the generation moved
    node.refresh_from_db()
    assert node.observed_generation < node.generation
    assert Replica.objects.filter(node=node, phase="Pending").count() == 2
    soon = timezone.now() + tasks.UNDELIVERED_PLACEMENT + timedelta(seconds=1)
    assert tasks.nodes_to_resend(soon) == []
    assert tasks.nodes_to_resend(soon, every_lagging=True) == [node.pk]
    much_later = timezone.now() + tasks.UNDELIVERED_STOP + timedelta(seconds=1)
    assert tasks.nodes_to_resend(much_later) == [node.pk]
    # The agent acknowledges the generation but still does not list the replicas: the set
    # it applied lacked them, and the rule for a dead worker applies (seconds, not a minute).
    Node.objects.filter(pk=node.pk).update(observed_generation=node.generation)
    assert tasks.nodes_to_resend(soon) == [node.pk]


def test_a_dispatch_to_more_agents_than_the_inbox_bound_of_old_loses_none():
    """channels_redis bounds a whole web process's inbox (one Redis key for all its
    consumers), not one consumer's, and drops what arrives past the bound. A flush to
    thousands of nodes served by one process must all arrive: 1,500 frames here, past the
    old bound of 1,000 (which dropped frames at 5,000 hollow nodes)."""
    from orchestrator.publish import group_send_many

    count = 1500
    layer = get_channel_layer()

    async def scenario():
        channels = [await layer.new_channel() for _ in range(count)]  # one process's consumers
        for index, channel in enumerate(channels):
            await layer.group_add(f"inbox-test.{index}", channel)
        await database_sync_to_async(group_send_many)(
            (f"inbox-test.{index}", {"type": "desired.push", "index": index}) for index in range(count)
        )
        received = [await asyncio.wait_for(layer.receive(channel), 10) for channel in channels]
        for index, channel in enumerate(channels):
            await layer.group_discard(f"inbox-test.{index}", channel)
        return [message["index"] for message in received]

    assert run(scenario) == list(range(count))


def test_a_reconcile_requested_while_redis_is_down_is_not_an_error(caplog):
    """The change is committed already: failing the caller (an API request) would only hide
    that it was saved. The resync picks the deployment up once Redis is back."""
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    with mock.patch("orchestrator.tasks._marks", dead):
        tasks.request_reconcile(12345)
    assert "could not queue a reconcile of deployment 12345" in caplog.text
