"""The dashboard's lists at many nodes: pages with a filter, the overview's attention-first
few, and live updates that carry a page (not the fleet) at most once a second per viewer."""

import asyncio
import json
import re

import pytest
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from nodes.models import Node
from orchestrator.broadcast import CLUSTER_GROUP
from tests.integration.test_agent_channel import run
from web.consumers import browser as browser_consumers
from web.consumers.browser import ClusterConsumer

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fleet(db):
    """250 Ready nodes, n000 to n249."""
    Node.objects.bulk_create(
        Node(name=f"n{i:03d}", status=Node.Status.READY, capacity_cpu=2000, capacity_memory=2**31)
        for i in range(250)
    )


def shown(first: int, last: int, count: int) -> str:
    """The pager's range, as the page words it."""
    return f"{first}\u2013{last} of {count} nodes"


def rows(html: str) -> list[str]:
    return re.findall(r'<tr data-node="([^"]+)"', html)


def test_the_nodes_list_is_paged_and_filtered(browser, fleet):
    first = browser.get("/nodes/").content.decode()
    assert rows(first) == [f"n{i:03d}" for i in range(100)]
    assert shown(1, 100, 250) in first and 'href="?page=2"' in first

    last = browser.get("/nodes/?page=3").content.decode()
    assert rows(last) == [f"n{i:03d}" for i in range(200, 250)]
    assert shown(201, 250, 250) in last and 'href="?page=2"' in last and 'rel="next"' not in last
    # Not a number: the first page; past the end: the last (as Portainer's lists do).
    assert rows(browser.get("/nodes/?page=abc").content.decode())[0] == "n000"
    assert rows(browser.get("/nodes/?page=99").content.decode())[-1] == "n249"

    filtered = browser.get("/nodes/?q=N01").content.decode()  # a part of the name, any case
    assert rows(filtered) == [f"n{i:03d}" for i in range(10, 20)]
    assert shown(1, 10, 10) in filtered
    assert "no nodes with “zzz” in the name" in browser.get("/nodes/?q=zzz").content.decode()


def test_the_overview_shows_nodes_needing_attention_first_and_counts_them_all(browser, fleet):
    Node.objects.create(name="z-down", status=Node.Status.NOT_READY)
    Node.objects.create(name="y-cordoned", status=Node.Status.READY, unschedulable=True)
    page = browser.get("/").content.decode()
    assert rows(page) == ["z-down", "y-cordoned", *(f"n{i:03d}" for i in range(18))]
    assert '<span class="big" data-count="nodes_ready">251</span>/<span data-count="nodes">252</span>' in page


def snapshot_of(user, query: str) -> dict:
    consumer = ClusterConsumer()
    consumer.scope = {"user": user, "query_string": query.encode()}
    consumer.authorise(user)
    return consumer.snapshot()


def test_a_live_update_carries_the_page_shown_not_the_fleet(user, fleet, django_assert_max_num_queries):
    with django_assert_max_num_queries(8):  # not one per node
        overview = snapshot_of(user, "view=overview")
    assert [n["name"] for n in overview["nodes"]] == [f"n{i:03d}" for i in range(20)]
    assert overview["counts"] == {"nodes": 250, "nodes_ready": 250, "deployments": 0, "replicas_running": 0}
    assert len(json.dumps(overview)) < 30_000

    second = snapshot_of(user, "view=nodes&page=2&q=N")
    assert [n["name"] for n in second["nodes"]] == [f"n{i:03d}" for i in range(100, 200)]
    assert second["pager"]["count"] == 250 and second["pager"]["previous"] == "?page=1&q=N"
    assert "deployments" not in second and "events" not in second

    node_page = snapshot_of(user, "node=n007")
    assert node_page["node"]["name"] == "n007" and "nodes" not in node_page
    assert snapshot_of(user, "node=gone")["node"] is None  # the page goes back to the list


def test_a_burst_of_changes_reaches_a_viewer_as_one_snapshot_a_second(user, monkeypatch):
    monkeypatch.setattr(browser_consumers, "SNAPSHOT_EVERY_SECONDS", 0.5)
    Node.objects.create(name="h1", status=Node.Status.READY)

    async def scenario():
        ws = WebsocketCommunicator(ClusterConsumer.as_asgi(), "/ws/cluster/?view=overview")
        ws.scope["user"] = user
        connected, _ = await ws.connect()
        assert connected
        await ws.receive_json_from(timeout=5)  # the first snapshot, at once
        loop = asyncio.get_running_loop()
        connected_at = loop.time()
        layer = get_channel_layer()
        for _ in range(10):  # a burst of changes (a deploy pokes after every pass)
            await layer.group_send(CLUSTER_GROUP, {"type": "state.changed"})
        await ws.receive_json_from(timeout=5)
        waited = loop.time() - connected_at
        quiet = await ws.receive_nothing(timeout=1.0)
        await ws.disconnect()
        return waited, quiet

    waited, quiet = run(scenario)
    assert waited >= 0.45  # the interval after the last snapshot, not at once
    assert quiet  # the ten changes folded into that one snapshot


@pytest.fixture
def big_deployment(db):
    """A deployment of 150 replicas, the first 60 of its current revision, the rest older."""
    from orchestrator import services
    from orchestrator.models import Namespace, Replica

    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 150}, None
    )
    current = deployment.revision()
    Replica.objects.bulk_create(
        Replica(
            namespace=deployment.namespace,
            deployment=deployment,
            name=f"web-{i:03d}",
            phase=Replica.Phase.RUNNING,
            revision=current if i < 60 else "older",
            template={},
        )
        for i in range(150)
    )
    return deployment


def replica_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-replica="([^"]+)"', html)


def test_a_deployments_replicas_are_paged_and_its_socket_carries_the_page(
    browser, user, big_deployment, django_assert_max_num_queries
):
    page = browser.get("/namespaces/default/deployments/web/").content.decode()
    assert replica_rows(page) == [f"web-{i:03d}" for i in range(100)]
    assert "1\u2013100 of 150 replicas" in page
    assert '<span id="rollout-old">90</span>' in page  # counted over all of them, not the page
    second = browser.get("/namespaces/default/deployments/web/?page=2").content.decode()
    assert replica_rows(second) == [f"web-{i:03d}" for i in range(100, 150)]
    assert 'data-ws="/ws/namespaces/default/deployments/web/?page=2"' in second

    consumer = browser_consumers.DeploymentConsumer()
    kwargs = {"namespace": "default", "name": "web"}
    query = b"page=2&replica=web-007"
    consumer.scope = {"user": user, "url_route": {"kwargs": kwargs}, "query_string": query}
    consumer.authorise(user)
    with django_assert_max_num_queries(12):  # not one per replica
        snapshot = consumer.snapshot()
    assert [r["name"] for r in snapshot["replicas"]] == [f"web-{i:03d}" for i in range(100, 150)]
    assert snapshot["old_replicas"] == 90 and snapshot["pager"]["count"] == 150
    assert snapshot["replica"]["name"] == "web-007"  # the replica page's own, wherever it is
