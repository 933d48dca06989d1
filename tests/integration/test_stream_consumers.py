"""The stream consumers (logs, terminal, metrics) through the real ASGI application and the
Redis channel layer, with a stand-in agent on the agents' WebSocket: who may subscribe,
what reaches the agent, what reaches the viewer, and what a slow viewer loses."""

import asyncio
import json

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

from config.asgi import application
from nodes.models import Node
from orchestrator import services
from orchestrator.models import Namespace, Replica
from tests.integration.test_agent_channel import HELLO, enroll
from web.consumers.logs import LogsConsumer
from web.models import TerminalSession
from web.services import do_create_api_token

pytestmark = pytest.mark.django_db(transaction=True)
ORIGIN = [(b"origin", b"http://localhost")]


def run(fn, *args):
    return async_to_sync(fn)(*args)


@pytest.fixture(autouse=True)
def fresh_channel_layer():
    """Each test runs its scenario in an event loop of its own; the Redis channel layer keeps
    per-loop locks, so each test gets a layer of its own too."""
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture
def world(default_namespace):
    """A node h1 with a Running replica web-a1 of deployment web, and two users' API tokens."""
    node, credential = enroll("h1")
    Node.objects.filter(pk=node.pk).update(status=Node.Status.READY)
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 1}, None
    )
    for name in ("web-a1", "web-b2"):
        Replica.objects.create(
            namespace=deployment.namespace,
            deployment=deployment,
            name=name,
            node=node,
            phase=Replica.Phase.RUNNING,
            container_id=f"c-{name}",
            revision=deployment.revision() if callable(deployment.revision) else deployment.revision,
            template=deployment.template(),
        )
    users = get_user_model().objects
    viewer = users.create_user("viewer", password="a-long-password-1")
    operator = users.create_user("operator", password="a-long-password-1")
    operator.user_permissions.add(Permission.objects.get(codename="exec_replica"))
    return {
        "credential": credential,
        "viewer": do_create_api_token(viewer, "t")[1],
        "operator": do_create_api_token(operator, "t")[1],
    }


async def agent_session(credential):
    ws = WebsocketCommunicator(
        application, "/ws/agent/", headers=[(b"authorization", f"Bearer {credential}".encode())]
    )
    connected, _ = await ws.connect()
    assert connected
    await ws.send_json_to(HELLO)
    await receive_type(ws, "welcome")
    return ws


async def receive_type(ws, kind, timeout=5.0):
    """The next frame of type `kind`, skipping others (desired sets, renewals)."""
    deadline = asyncio.get_running_loop().time() + timeout
    seen = []
    while True:
        left = deadline - asyncio.get_running_loop().time()
        assert left > 0, f"no {kind!r} frame within {timeout} s; saw {seen}"
        frame = await ws.receive_json_from(timeout=left)
        if frame.get("type") == kind:
            return frame
        seen.append(frame.get("type"))


async def viewer(path):
    ws = WebsocketCommunicator(application, path, headers=ORIGIN)
    connected, _ = await ws.connect()
    assert connected
    return ws


def test_an_unauthenticated_log_socket_is_closed(world):
    async def scenario():
        ws = await viewer("/ws/namespaces/default/deployments/web/logs/")
        await ws.send_json_to({"type": "subscribe", "tail": 10})
        error = await ws.receive_json_from(timeout=5)
        closed = await ws.receive_output(timeout=5)
        await ws.disconnect()
        return error, closed

    error, closed = run(scenario)
    assert error["field"] == "token"
    assert closed == {"type": "websocket.close", "code": 4401}


def test_logs_subscription_reaches_the_agent_and_lines_come_back_merged(world):
    async def scenario():
        agent = await agent_session(world["credential"])
        ws = await viewer("/ws/namespaces/default/deployments/web/logs/")
        await ws.send_json_to({"type": "subscribe", "tail": 50, "token": world["viewer"]})
        subscribed = await ws.receive_json_from(timeout=5)
        opens = [await receive_type(agent, "logs.open"), await receive_type(agent, "logs.open")]
        by_replica = {o["replica"]: o for o in opens}
        for replica, text in (("web-a1", "hello from a"), ("web-b2", "hello from b")):
            await agent.send_json_to(
                {
                    "type": "logs",
                    "stream": by_replica[replica]["stream"],
                    "lines": [
                        [
                            "2026-11-22T11:00:00.000000001Z",
                            "stderr" if replica == "web-b2" else "stdout",
                            text,
                        ]
                    ],
                }
            )
        lines = []
        while len(lines) < 2:
            lines += (await ws.receive_json_from(timeout=5))["lines"]
        await ws.disconnect()
        closes = {(await receive_type(agent, "stream.close"))["stream"] for _ in range(2)}
        await agent.disconnect()
        return subscribed, opens, lines, closes

    subscribed, opens, lines, closes = run(scenario)
    assert subscribed == {"type": "subscribed", "replicas": ["web-a1", "web-b2"]}
    assert {o["replica"] for o in opens} == {"web-a1", "web-b2"}
    assert all(o["tail"] == 50 and o["follow"] is True and o["namespace"] == "default" for o in opens)
    assert sorted(lines) == [
        ["web-a1", "2026-11-22T11:00:00.000000001Z", "stdout", "hello from a"],
        ["web-b2", "2026-11-22T11:00:00.000000001Z", "stderr", "hello from b"],
    ]
    assert closes == {o["stream"] for o in opens}  # the last viewer left: the agent stops streaming


def test_bad_log_requests_get_a_clear_error_and_the_socket_stays_usable(world):
    async def scenario():
        agent = await agent_session(world["credential"])
        ws = await viewer("/ws/namespaces/default/replicas/web-a1/logs/")
        answers = []
        for message in (
            {"type": "subscribe", "since": "yesterday-ish", "token": world["viewer"]},
            {"type": "subscribe", "tail": -5},
            {"type": "launch"},
        ):
            await ws.send_json_to(message)
            answers.append(await ws.receive_json_from(timeout=5))
        missing = await viewer("/ws/namespaces/default/replicas/nope/logs/")
        await missing.send_json_to({"type": "subscribe", "token": world["viewer"]})
        answers.append(await missing.receive_json_from(timeout=5))
        await missing.disconnect()
        await ws.send_json_to({"type": "subscribe", "since": "5m"})
        answers.append(await ws.receive_json_from(timeout=5))
        opened = await receive_type(agent, "logs.open")
        await ws.disconnect()
        await agent.disconnect()
        return answers, opened

    answers, opened = run(scenario)
    assert [(a["type"], a.get("field")) for a in answers] == [
        ("error", "since"),
        ("error", "tail"),
        ("error", "type"),
        ("error", "replica"),
        ("subscribed", None),
    ]
    assert "not a time" in answers[0]["message"] and "nope" in answers[3]["message"]
    assert opened["replica"] == "web-a1" and opened["since"].endswith("Z") and opened["tail"] == 200


def test_a_slow_viewer_loses_lines_with_a_marker_and_the_agent_is_not_held_up(world, monkeypatch):
    monkeypatch.setattr(LogsConsumer, "buffer_lines", 10)
    release = asyncio.Event()
    original = LogsConsumer.send_json

    async def stalled_send_json(self, content, close=False):
        if content.get("type") == "lines":
            await release.wait()  # fault injection: the browser stops reading
        await original(self, content, close)

    monkeypatch.setattr(LogsConsumer, "send_json", stalled_send_json)

    async def scenario():
        agent = await agent_session(world["credential"])
        ws = await viewer("/ws/namespaces/default/replicas/web-a1/logs/")
        await ws.send_json_to({"type": "subscribe", "token": world["viewer"]})
        await ws.receive_json_from(timeout=5)
        stream = (await receive_type(agent, "logs.open"))["stream"]
        number = 0
        for _ in range(5):  # 5 batches of 10 lines; the viewer holds at most 10 (+1 in flight)
            lines = []
            for _ in range(10):
                number += 1
                lines.append([f"2026-11-22T11:00:00.{number:09d}Z", "stdout", f"line {number}"])
            await agent.send_json_to({"type": "logs", "stream": stream, "lines": lines})
        # The agent's connection is not held up: it still answers at once.
        await agent.send_json_to({"type": "heartbeat"})
        await asyncio.sleep(0)
        got = []

        async def collect():
            while not any(e[2] == "dropped" for e in got) or len([e for e in got if e[2] != "dropped"]) < 10:
                got.extend((await ws.receive_json_from(timeout=5))["lines"])

        # Wait until the consumer has taken all 50 lines in (some into the buffer, the rest dropped).
        consumer_done = asyncio.get_running_loop().time() + 5
        while asyncio.get_running_loop().time() < consumer_done:
            await asyncio.sleep(0.05)
            if ws.output_queue.qsize() == 0 and release.is_set() is False:
                break
        await asyncio.sleep(0.5)
        release.set()
        await collect()
        await ws.disconnect()
        await agent.disconnect()
        return got

    got = run(scenario)
    texts = [e[3] for e in got if e[2] != "dropped"]
    markers = [e for e in got if e[2] == "dropped"]
    assert len(markers) == 1 and markers[0][0] is None
    assert markers[0][3] + len(texts) == 50, (markers, texts)
    assert texts[0] == "line 1"  # what it had stays in order; the marker stands where lines were lost
    numbers = [int(t.split()[1]) for t in texts]
    assert numbers == sorted(numbers)


def test_terminal_needs_the_exec_permission(world):
    async def scenario():
        ws = await viewer("/ws/namespaces/default/replicas/web-a1/terminal/")
        await ws.send_json_to(
            {"type": "open", "shell": "sh", "cols": 80, "rows": 24, "token": world["viewer"]}
        )
        error = await ws.receive_json_from(timeout=5)
        closed = await ws.receive_output(timeout=5)
        await ws.disconnect()
        return error, closed

    error, closed = run(scenario)
    assert error["field"] == "permission" and "exec_replica" in error["message"]
    assert closed == {"type": "websocket.close", "code": 4403}
    assert not TerminalSession.objects.exists()


def test_a_terminal_session_goes_through_the_agent_and_is_audited(world):
    async def scenario():
        agent = await agent_session(world["credential"])
        ws = await viewer("/ws/namespaces/default/replicas/web-a1/terminal/")
        await ws.send_json_to(
            {"type": "open", "shell": "sh", "cols": 80, "rows": 24, "token": world["operator"]}
        )
        assert (await ws.receive_json_from(timeout=5))["type"] == "opening"
        opened = await receive_type(agent, "exec.open")
        stream = opened["stream"]
        await agent.send_json_to({"type": "exec.started", "stream": stream})
        started = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "resize", "cols": 100000, "rows": 24})
        absurd = await ws.receive_json_from(timeout=5)
        await ws.send_json_to({"type": "resize", "cols": 120, "rows": 40})
        resized = await receive_type(agent, "exec.resize")
        await ws.send_json_to({"type": "input", "data": "echo $((6*7))\r"})
        typed = await receive_type(agent, "exec.input")
        await agent.send_json_to({"type": "exec.output", "stream": stream, "data": "42\r\n"})
        output = await ws.receive_json_from(timeout=5)
        await agent.send_json_to({"type": "stream.end", "stream": stream, "error": None, "exit_code": 0})
        exited = await ws.receive_json_from(timeout=5)
        closed = await ws.receive_output(timeout=5)
        await agent.disconnect()
        return opened, started, absurd, resized, typed, output, exited, closed

    opened, started, absurd, resized, typed, output, exited, closed = run(scenario)
    assert opened["command"] == ["/bin/sh"] and (opened["cols"], opened["rows"]) == (80, 24)
    assert started == {"type": "started"}
    assert absurd["type"] == "error" and absurd["field"] == "cols"
    assert (resized["cols"], resized["rows"]) == (120, 40)
    assert typed["data"] == "echo $((6*7))\r"
    assert output == {"type": "output", "data": "42\r\n"}
    assert exited == {"type": "exit", "code": 0, "error": None}
    assert closed["type"] == "websocket.close"
    session = TerminalSession.objects.get()
    assert (session.username, session.replica, session.node, session.exit_code) == (
        "operator",
        "web-a1",
        "h1",
        0,
    )
    assert session.ended_at is not None and session.duration_seconds >= 0


def test_agent_metrics_are_stored_and_pushed_to_viewers(world, api):
    async def scenario():
        agent = await agent_session(world["credential"])
        ws = await viewer("/ws/nodes/h1/metrics/")
        await ws.send_json_to({"type": "subscribe", "token": world["viewer"]})
        first = await ws.receive_json_from(timeout=5)
        import time

        now = time.time()
        for i, (cpu, rx) in enumerate(((None, 1000), (12.5, 6000))):
            await agent.send_json_to(
                {
                    "type": "metrics",
                    "time": now + i * 5,
                    "interval": 5,
                    "node": {
                        "cpu_percent": cpu,
                        "memory_bytes": 100,
                        "memory_total": 1000,
                        "net_rx_bytes": rx,
                        "net_tx_bytes": 0,
                        "block_read_bytes": 0,
                        "block_write_bytes": 0,
                    },
                    "containers": [
                        {
                            "namespace": "default",
                            "replica": "web-a1",
                            "cpu_percent": cpu,
                            "memory_bytes": 10,
                            "memory_limit": 0,
                            "net_rx_bytes": 0,
                            "net_tx_bytes": 0,
                            "block_read_bytes": 0,
                            "block_write_bytes": 0,
                        }
                    ],
                }
            )
            point = await ws.receive_json_from(timeout=5)
        await ws.disconnect()
        await agent.disconnect()
        return first, point

    first, point = run(scenario)
    assert first == {"type": "series", "series": {"node": []}}
    assert point["type"] == "points" and point["points"]["node"]["cpu"] == 12.5
    assert point["points"]["node"]["rx"] == 1000.0  # 5000 bytes over 5 s
    node = api.get("/api/v1/nodes/h1/metrics").json()
    assert [p["cpu"] for p in node["series"]["node"]] == [None, 12.5]
    replica = api.get("/api/v1/namespaces/default/replicas/web-a1/metrics").json()
    assert len(replica["series"]["web-a1"]) == 2
    assert api.get("/api/v1/nodes/h1/metrics?points=0").status_code == 400
    assert api.get("/api/v1/namespaces/default/replicas/nope/metrics").status_code == 404


def test_rest_logs_reject_a_since_that_is_not_a_time(world, api):
    response = api.get("/api/v1/namespaces/default/deployments/web/logs?since=soonish")
    assert response.status_code == 400 and "since" in response.json()
    assert api.get("/api/v1/namespaces/default/replicas/web-a1/logs?tail=-1").status_code == 400
    assert api.get("/api/v1/namespaces/default/replicas/ghost/logs").status_code == 404


def test_rest_logs_come_from_the_agent_merged_in_time_order(world):
    from channels.testing import HttpCommunicator

    async def scenario():
        agent = await agent_session(world["credential"])
        http = HttpCommunicator(
            application,
            "GET",
            "/api/v1/namespaces/default/deployments/web/logs",
            headers=[(b"authorization", f"Bearer {world['viewer']}".encode())],
        )
        http.scope["query_string"] = b"tail=5&format=ndjson"
        await http.send_input({"type": "http.request", "body": b""})

        async def read_response():
            start = await http.receive_output(10)
            body = b""
            while True:
                part = await http.receive_output(10)
                body += part.get("body", b"")
                if not part.get("more_body"):
                    return {"status": start["status"], "body": body}

        request = asyncio.ensure_future(read_response())
        opens = [await receive_type(agent, "logs.open"), await receive_type(agent, "logs.open")]
        for i, opened in enumerate(opens):
            assert opened["follow"] is False and opened["tail"] == 5
            times = ["2026-11-22T11:00:00.000000003Z", "2026-11-22T11:00:00.000000001Z"]
            await agent.send_json_to(
                {
                    "type": "logs",
                    "stream": opened["stream"],
                    "lines": [[times[i], "stdout", opened["replica"]]],
                }
            )
            await agent.send_json_to(
                {"type": "stream.end", "stream": opened["stream"], "error": None, "exit_code": None}
            )
        response = await request
        await agent.disconnect()
        return opens, response

    opens, response = run(scenario)
    assert response["status"] == 200, response
    records = [json.loads(line) for line in response["body"].decode().splitlines()]
    assert [r["replica"] for r in records] == [opens[1]["replica"], opens[0]["replica"]]  # by time


def test_logs_of_a_namespace_the_user_may_not_see_are_refused(world, monkeypatch):
    # The seam (web/permissions.py) decides; per-namespace roles will refine it there.
    monkeypatch.setattr(
        "web.consumers.logs.can_view_namespace", lambda user, namespace: namespace.name != "default"
    )

    async def scenario():
        agent = await agent_session(world["credential"])
        ws = await viewer("/ws/namespaces/default/deployments/web/logs/")
        await ws.send_json_to({"type": "subscribe", "token": world["viewer"]})
        answer = await ws.receive_json_from(timeout=5)
        await receive_type(agent, "desired")  # what every agent gets on connecting
        nothing = await agent.receive_nothing(timeout=0.5)
        await ws.disconnect()
        await agent.disconnect()
        return answer, nothing

    answer, nothing = run(scenario)
    assert answer["type"] == "error" and answer["field"] == "deployment"  # as if it did not exist
    assert nothing  # no stream was asked of the agent


def test_the_replica_page_offers_a_terminal_only_to_those_who_may_exec(world, client):
    users = get_user_model().objects
    client.force_login(users.get(username="viewer"))
    page = client.get("/namespaces/default/replicas/web-a1/")
    assert (
        page.status_code == 200
        and b"data-logs-ws" in page.content
        and b"data-terminal-ws" not in page.content
    )
    client.force_login(users.get(username="operator"))
    assert b"data-terminal-ws" in client.get("/namespaces/default/replicas/web-a1/").content
    assert client.get("/namespaces/default/replicas/nope/").status_code == 404
