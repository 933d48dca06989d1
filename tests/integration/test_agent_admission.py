"""A web process admits a bounded number of joining agents and tells the others to come
back (web/consumers/admission.py), and the node monitor holds its judgement while no web
process hears heartbeats (nodes/heartbeats.py receivers_silent): what keeps a fleet Ready
through a web server restart (benchmarks/reconnect_storm.py)."""

import asyncio
import logging
import socket
import threading
import time
import uuid
from datetime import timedelta

import pytest
import uvicorn
import websockets
from asgiref.sync import async_to_sync
from django.conf import settings
from django.utils import timezone

from nodes import heartbeats
from nodes.controllers.monitor import monitor_nodes
from nodes.models import Node
from tests.integration.test_agent_channel import HELLO, enroll, run, until_true
from tests.integration.test_agent_channel import communicator as plain_communicator
from web.consumers import agent as agent_consumer
from web.consumers import agent_gate
from web.consumers.admission import CredentialIndex, retry_after

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def one_join_at_a_time(settings, monkeypatch):
    settings.AGENT_JOINS_IN_FLIGHT = 1
    monkeypatch.setattr(agent_gate, "_gates", {})
    monkeypatch.setattr(agent_gate, "credentials", CredentialIndex())


def communicator(credential):
    """With the denial extension, as uvicorn's: a refused join answers 503, which fails connect()."""
    ws = plain_communicator(credential)
    ws.scope["extensions"] = {agent_gate.DENIAL: {}}
    return ws


async def knock(credential, *, denial=True):
    """A handshake; the first message the application answers it with."""
    ws = communicator(credential) if denial else plain_communicator(credential)
    await ws.send_input({"type": "websocket.connect"})
    answer = await ws.receive_output(timeout=5)
    return ws, answer


def busy(answer) -> int:
    assert answer["type"] == "websocket.http.response.start", answer
    assert answer["status"] == 503
    headers = dict(answer["headers"])
    assert b"text/plain" in headers[b"content-type"]
    return int(headers[b"retry-after"])


def test_past_the_joins_in_flight_an_agent_is_told_to_come_back_and_its_knock_is_a_heartbeat():
    node1, first = enroll("h1")
    node2, second = enroll("h2")
    heartbeats._client().delete(heartbeats.KEY, heartbeats.KNOCKS_KEY)

    async def scenario():
        joining = communicator(first)
        assert (await joining.connect())[0]  # no hello yet: its join holds the only slot
        ws, answer = await knock(second)
        wait = retry_after(settings.NODE_GRACE_SECONDS)
        assert busy(answer) == wait
        body = await ws.receive_output(timeout=5)
        assert body["type"] == "websocket.http.response.body"
        assert f"try again in {wait} s" in body["body"].decode()
        # The first knock made the process read the credentials; a knock after it is a beat.
        await until_true(lambda: agent_gate.credentials.lookup(node2.credential_hash) == node2.pk)
        before = time.time()
        _, answer = await knock(second)
        busy(answer)
        await heartbeats.flush()
        assert heartbeats.read_knocks()[node2.pk] >= before
        assert node1.pk not in heartbeats.read_knocks()  # only the knocking node
        assert node2.pk not in heartbeats.read_all()  # a knock, not a session's beat
        ttl = heartbeats._client().ttl(heartbeats.KNOCKS_KEY)  # gone once knocking stops
        assert 0 < ttl <= settings.NODE_GRACE_SECONDS + heartbeats.rejoin_allowance() + 1

        # A server without the denial extension: accepted, then closed "try again later".
        ws, answer = await knock(second, denial=False)
        assert answer["type"] == "websocket.accept"
        assert (await ws.receive_output(timeout=5)) == {"type": "websocket.close", "code": 1013}

        # The first agent's join ends with its full set: the slot is free again.
        await joining.send_json_to(HELLO)
        assert (await joining.receive_json_from(timeout=5))["type"] == "welcome"
        assert (await joining.receive_json_from(timeout=5))["type"] == "desired"
        admitted = communicator(second)
        assert (await admitted.connect())[0]
        await admitted.disconnect()
        await joining.disconnect()

    run(scenario)
    assert agent_gate.gate().in_flight == 0  # every slot was given back


async def holding_the_slot(first, second):
    """The first agent is accepted and says nothing: the second is told to come back."""
    joining = communicator(first)
    assert (await joining.connect())[0]
    _, answer = await knock(second)
    busy(answer)
    return joining


def test_an_agent_that_never_says_hello_gives_its_slot_back_when_it_goes():
    _, first = enroll("h1")
    _, second = enroll("h2")

    async def scenario():
        joining = await holding_the_slot(first, second)
        await joining.disconnect()
        admitted = communicator(second)
        assert (await admitted.connect())[0]
        await admitted.disconnect()

    run(scenario)


def test_a_refused_bad_credential_takes_no_slot():
    _, good = enroll("h1")
    _, other = enroll("h2")

    async def scenario():
        for _ in range(3):
            refused = communicator("berth_node_wrong")  # checked against the database
            assert (await refused.connect()) == (False, 1000)
        ws = communicator(good)
        assert (await ws.connect())[0]
        # No node credential at all: 403 at the gate, even with every slot taken.
        for credential in (None, "not-even-a-token"):
            assert (await communicator(credential).connect()) == (False, 1000)
        _, answer = await knock(other)
        busy(answer)  # the one slot is still the first agent's
        await ws.disconnect()

    run(scenario)


# --- the node monitor while no web process hears heartbeats ---------------------------------------


def stale_node():
    """A Ready node whose last beat is two graces old."""
    node, _ = enroll()
    grace = timedelta(seconds=settings.NODE_GRACE_SECONDS)
    now = timezone.now()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY, session=uuid.uuid4())
    client = heartbeats._client()
    client.hset(heartbeats.KEY, str(node.pk), repr((now - 2 * grace).timestamp()))
    client.set(heartbeats.EPOCH_KEY, repr((now - 10 * grace).timestamp()))
    return node, now, grace


def test_while_no_web_process_hears_heartbeats_no_node_is_called_silent():
    node, now, grace = stale_node()
    client = heartbeats._client()
    client.set(heartbeats.RECEIVERS_SEEN_KEY, "1")  # web processes ran; none says it hears now
    assert monitor_nodes(now=now) == []
    assert Node.objects.get(pk=node.pk).status == Node.Status.READY
    # Heard again: a node not heard since gets the rejoin allowance and its grace, from the
    # last pass that found nobody hearing.
    client.set(heartbeats.RECEIVING_KEY, "1", px=60_000)  # not to expire within the test
    allowed = grace + timedelta(seconds=heartbeats.rejoin_allowance())
    assert monitor_nodes(now=now + allowed - timedelta(seconds=1)) == []
    assert monitor_nodes(now=now + allowed + timedelta(seconds=1)) == ["h1"]


def test_a_node_heard_since_the_web_processes_came_back_is_judged_from_its_beat():
    """The allowance is for agents still on their way back, not for one already heard."""
    node, now, grace = stale_node()
    client = heartbeats._client()
    client.set(heartbeats.RECEIVERS_SEEN_KEY, "1")
    assert monitor_nodes(now=now) == []  # nobody hears: the epoch moves to now
    client.set(heartbeats.RECEIVING_KEY, "1", px=60_000)
    client.hset(heartbeats.KEY, str(node.pk), repr(now.timestamp() + 1))  # its agent beat once
    assert monitor_nodes(now=now + grace) == []
    assert monitor_nodes(now=now + grace + timedelta(seconds=2)) == ["h1"]


def test_a_node_whose_agent_only_knocked_since_keeps_its_rejoin_allowance_and_knocks_keep_it_alive():
    """Knocks (refused or waiting at the door) are not a session: the allowance holds for a
    node that only knocked, and past it the knocks themselves keep it Ready like beats."""
    node, now, grace = stale_node()
    client = heartbeats._client()
    client.set(heartbeats.RECEIVERS_SEEN_KEY, "1")
    assert monitor_nodes(now=now) == []  # nobody hears: the epoch moves to now
    client.set(heartbeats.RECEIVING_KEY, "1", px=60_000)
    client.hset(heartbeats.KNOCKS_KEY, str(node.pk), repr(now.timestamp() + 1))
    allowed = grace + timedelta(seconds=heartbeats.rejoin_allowance())
    assert monitor_nodes(now=now + allowed - timedelta(seconds=1)) == []
    knocked = now + allowed - timedelta(seconds=2)
    client.hset(heartbeats.KNOCKS_KEY, str(node.pk), repr(knocked.timestamp()))
    assert monitor_nodes(now=now + allowed + timedelta(seconds=1)) == []  # it knocks on
    assert monitor_nodes(now=knocked + grace + timedelta(seconds=1)) == ["h1"]


def test_the_monitor_holds_its_judgement_only_so_long():
    """Web processes gone for good must not keep dead nodes Ready for ever."""
    _, now, _ = stale_node()
    client = heartbeats._client()
    client.set(heartbeats.RECEIVERS_SEEN_KEY, "1")
    assert monitor_nodes(now=now) == []
    later = now + timedelta(seconds=heartbeats.HOLD_LIMIT_SECONDS + 1)
    assert monitor_nodes(now=later) == ["h1"]


def test_with_a_web_process_hearing_a_silent_node_is_called_silent_at_once():
    """The reference case: the same node, heard by a web process (or with no web process ever
    seen, as in a test without one) turns NotReady at the first pass."""
    _, now, _ = stale_node()
    client = heartbeats._client()
    client.set(heartbeats.RECEIVERS_SEEN_KEY, "1")
    client.set(heartbeats.RECEIVING_KEY, "1", px=60_000)  # not to expire within the test
    assert monitor_nodes(now=now) == ["h1"]


def test_no_web_process_ever_seen_means_nodes_are_judged_as_always():
    _, now, _ = stale_node()
    assert monitor_nodes(now=now) == ["h1"]


def test_a_web_process_says_it_hears_heartbeats_while_its_loop_keeps_time():
    import asyncio

    client = heartbeats._client()

    async def scenario():
        watcher = asyncio.get_running_loop().create_task(heartbeats.watch_lag())
        try:
            while not client.exists(heartbeats.RECEIVING_KEY):
                await asyncio.sleep(0.01)
        finally:
            watcher.cancel()

    async_to_sync(asyncio.wait_for)(scenario(), 10)
    assert client.exists(heartbeats.RECEIVERS_SEEN_KEY)
    assert 0 < client.pttl(heartbeats.RECEIVING_KEY) <= heartbeats.RECEIVING_TTL_MS  # it expires
    assert client.pttl(heartbeats.RECEIVERS_SEEN_KEY) == -1  # this one does not


def test_a_known_agent_beats_as_it_knocks_and_a_refused_credential_is_forgotten():
    node, old = enroll("h1")
    agent_gate.credentials.replace({node.credential_hash: node.pk})
    enroll("h1")  # enrolled again: the old credential stops working
    heartbeats._client().delete(heartbeats.KEY, heartbeats.KNOCKS_KEY)

    async def scenario():
        refused = communicator(old)
        assert (await refused.connect()) == (False, 1000)  # 403: the database knows better
        await heartbeats.flush()
        beats = heartbeats.read_knocks()
        assert not agent_gate.credentials.lookup(node.credential_hash)
        heartbeats._client().delete(heartbeats.KEY, heartbeats.KNOCKS_KEY)
        again = communicator(old)
        assert (await again.connect()) == (False, 1000)
        await heartbeats.flush()
        return beats

    # The index's stale entry was worth one beat (what the index knew then), no more.
    assert node.pk in run(scenario)
    assert node.pk not in heartbeats.read_knocks()


def test_a_web_process_reads_every_nodes_credential_at_its_start():
    """What web.lifespan does before serving: the first knocks after a restart are heartbeats."""
    nodes = [enroll(f"h{i}")[0] for i in range(3)]
    run(agent_gate.read_credentials)
    assert [agent_gate.credentials.lookup(n.credential_hash) for n in nodes] == [n.pk for n in nodes]
    assert not agent_gate.credentials.loading


def test_an_accepted_agent_that_says_no_hello_gives_its_slot_back_and_keeps_its_session(monkeypatch):
    """The handshake of an agent that had already given up (taken late from the listen
    backlog) must not hold a slot: it is given back HELLO_SLOT_SECONDS after accept."""
    monkeypatch.setattr(agent_consumer, "HELLO_SLOT_SECONDS", 0.2)
    _, first = enroll("h1")
    _, second = enroll("h2")

    async def scenario():
        silent = await holding_the_slot(first, second)
        await asyncio.sleep(0.4)
        admitted = communicator(second)
        assert (await admitted.connect())[0]  # given back, though the silent one is still there
        # The silent agent's hello, late, still gets it welcomed.
        await silent.send_json_to(HELLO)
        assert (await silent.receive_json_from(timeout=5))["type"] == "welcome"
        await admitted.disconnect()
        await silent.disconnect()

    run(scenario)
    assert agent_gate.gate().in_flight == 0


def test_uvicorn_logs_no_error_for_a_refused_knock_and_still_logs_a_broken_handshake(caplog):
    """uvicorn's websockets-sansio protocol calls every handshake answered with HTTP one the
    application left without completing (uvicorn PR #3138): the gate's filter drops that
    ERROR line for its own refusals, and only for them."""

    async def broken(scope, receive, send):  # answers nothing: a real incomplete handshake
        await receive()

    gate = agent_gate.AgentGate(broken)

    async def app(scope, receive, send):
        await (gate if scope["path"].startswith("/ws/agent/") else broken)(scope, receive, send)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, ws="websockets-sansio", lifespan="off", log_config=None
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    held = agent_gate.gate().enter()  # the only slot: the next agent is refused
    try:
        assert until_started(server)
        caplog.set_level(logging.INFO, logger="uvicorn.error")

        async def statuses():
            found = []
            for path in ("/ws/agent/", "/ws/other/"):
                headers = {"Authorization": "Bearer berth_node_unknown"}
                with pytest.raises(websockets.InvalidStatus) as refused:
                    await websockets.connect(f"ws://127.0.0.1:{port}{path}", additional_headers=headers)
                found.append(refused.value.response.status_code)
            return found

        assert asyncio.run(statuses()) == [503, 500]
    finally:
        agent_gate.gate().leave(held)
        server.should_exit = True
        thread.join(10)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [agent_gate.UVICORN_DENIAL_ERROR]  # the broken handshake's, not the refusal's
    assert any("503" in r.getMessage() for r in caplog.records)  # the refusal itself is still logged


def until_started(server, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not server.started:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # polling a flag another thread sets
    return True
