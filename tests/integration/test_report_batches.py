"""Agents' status reports are applied in batches per web process, newest per node."""

import threading
from unittest import mock

import pytest

from nodes.models import Node
from orchestrator import services
from orchestrator.controllers import node_reports
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Namespace, Replica
from tests.integration.test_agent_channel import run, until_true
from web.consumers.reports import ReportBuffer

pytestmark = pytest.mark.django_db(transaction=True)


def report(replicas, phase, generation):
    entries = [
        {"name": r.name, "namespace": "default", "container_id": f"c-{r.name}", "phase": phase}
        for r in replicas
    ]
    return {"type": "status", "generation": generation, "full": True, "replicas": entries}


def test_reports_arriving_during_a_batch_go_together_in_the_next_and_the_newest_wins():
    nodes = [
        Node.objects.create(name=f"h{i}", status=Node.Status.READY, capacity_cpu=4000, capacity_memory=2**32)
        for i in range(3)
    ]
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 6}, None
    )
    reconcile_deployment(deployment.pk)
    by_node = {n.pk: list(Replica.objects.filter(node=n)) for n in nodes}
    release = threading.Event()
    batches = []
    real = node_reports.apply_node_reports

    def held(batch):
        batches.append(sorted(batch))
        if len(batches) == 1:
            release.wait(10)  # the first batch is slow: the others queue behind it
        return real(batch)

    async def scenario():
        buffer = ReportBuffer()
        first = nodes[0].pk
        buffer.submit(first, report(by_node[first], "Starting", 1))
        await until_true(lambda: bool(batches), timeout=10)  # the first batch is applied (and held)
        for node in nodes:
            buffer.submit(node.pk, report(by_node[node.pk], "Starting", 2))
            buffer.submit(node.pk, report(by_node[node.pk], "Running", 3))  # replaces the one before
        release.set()
        await buffer.drain()
        return buffer.batches

    with mock.patch("web.consumers.reports.apply_node_reports", held):
        applied = run(scenario)
    assert applied == 2
    assert batches == [[nodes[0].pk], sorted(n.pk for n in nodes)]
    assert set(Replica.objects.values_list("phase", flat=True)) == {"Running"}
    assert set(Node.objects.values_list("observed_generation", flat=True)) == {3}


def test_replicas_that_changed_different_fields_keep_each_others_values():
    """One replica starts running while another only changes its message: the write of the
    two together must not put either back to what the other one had."""
    node = Node.objects.create(name="h1", status=Node.Status.READY, capacity_cpu=4000, capacity_memory=2**32)
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 2}, None
    )
    reconcile_deployment(deployment.pk)
    first, second = Replica.objects.filter(node=node).order_by("pk")
    node_reports.apply_node_report(node.pk, report([first, second], "Starting", 1))
    entries = report([first, second], "Starting", 2)
    entries["replicas"][0]["phase"] = "Running"
    entries["replicas"][1]["message"] = "pulling image"
    node_reports.apply_node_report(node.pk, entries)
    assert list(Replica.objects.order_by("pk").values_list("phase", "message")) == [
        ("Running", ""),
        ("Starting", "pulling image"),
    ]
