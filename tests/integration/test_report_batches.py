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


def placed(nodes: int, replicas: int) -> list[Node]:
    """`nodes` Ready nodes and a deployment of `replicas` placed on them."""
    made = [
        Node.objects.create(name=f"h{i}", status=Node.Status.READY, capacity_cpu=4000, capacity_memory=2**32)
        for i in range(nodes)
    ]
    spec = {"name": "web", "image": "busybox:1", "replicas": replicas}
    deployment = services.do_create_deployment(Namespace.objects.get(name="default"), spec, None)
    reconcile_deployment(deployment.pk)
    return made


def test_reports_arriving_during_a_batch_go_together_in_the_next_and_the_newest_wins():
    nodes = placed(3, 6)
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


def partial(full_report, carried, names=None):
    """`full_report` as an agent's partial frame: only the entries of `carried` (names)."""
    entries = full_report["replicas"]
    listed = names if names is not None else [e["name"] for e in entries]
    return {
        "type": "status",
        "generation": full_report["generation"],
        "full": False,
        "names": [["default", n] for n in listed],
        "replicas": [e for e in entries if e["name"] in carried],
    }


def test_a_partial_report_writes_what_it_carries_and_ends_only_the_terminations_it_no_longer_names(
    django_assert_max_num_queries,
):
    node = Node.objects.create(name="h1", status=Node.Status.READY, capacity_cpu=4000, capacity_memory=2**32)
    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1", "replicas": 4}, None
    )
    reconcile_deployment(deployment.pk)
    a, b, c, d = Replica.objects.filter(node=node).order_by("pk")
    node_reports.apply_node_report(node.pk, report([a, b, c, d], "Running", 1))
    # c and d are being stopped; the agent has removed d's container, not yet c's.
    Replica.objects.filter(pk__in=[c.pk, d.pk]).update(phase=Replica.Phase.TERMINATING)
    # b was set Unknown meanwhile: a partial report leaves what it does not carry alone.
    Replica.objects.filter(pk=b.pk).update(phase=Replica.Phase.UNKNOWN)
    second = report([a, b, c], "Running", 2)
    second["replicas"][0]["phase"] = "Failed"
    second["replicas"][0]["exit_code"] = 3
    # Reads the carried and the Terminating replicas only: not the node's whole set.
    with django_assert_max_num_queries(14) as captured:
        node_reports.apply_node_report(
            node.pk, partial(second, carried={a.name}, names=[a.name, b.name, c.name])
        )
    phases = dict(Replica.objects.values_list("name", "phase"))
    assert phases == {a.name: "Failed", b.name: "Unknown", c.name: "Terminating"}  # d is gone
    (read,) = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith("SELECT") and "namespace" in q["sql"]
    ]
    # by the names it carries and the phase being stopped, not all of the node's replicas
    assert f"IN ('{a.name}')" in read and "= 'Terminating'" in read, read
    assert Node.objects.get(pk=node.pk).observed_generation == 2
    # A full report, as after a full desired set, puts b right.
    node_reports.apply_node_report(node.pk, report([a, b, c], "Running", 3))
    assert Replica.objects.get(pk=b.pk).phase == "Running"


def test_partial_reports_waiting_for_a_batch_merge_into_one():
    older = {"type": "status", "generation": 1, "full": True, "replicas": [
        {"name": "a", "namespace": "default", "phase": "Starting"},
        {"name": "b", "namespace": "default", "phase": "Starting"},
        {"name": "c", "namespace": "default", "phase": "Running"},
    ]}  # fmt: skip
    newer = {"type": "status", "generation": 2, "full": False,
             "names": [["default", "a"], ["default", "b"], ["default", "d"]],
             "replicas": [{"name": "b", "namespace": "default", "phase": "Running"},
                          {"name": "d", "namespace": "default", "phase": "Starting"}]}  # fmt: skip
    merged = node_reports.merge_reports(older, newer)
    # c was removed (not named), b and d are the newer's, a the older's: still a full picture.
    assert merged["full"] is True and merged["generation"] == 2
    assert {e["name"]: e["phase"] for e in merged["replicas"]} == {
        "a": "Starting",
        "b": "Running",
        "d": "Starting",
    }
    # Partial under partial: still partial, naming what the newer names.
    merged = node_reports.merge_reports({**newer, "generation": 1}, {**newer, "replicas": []})
    assert merged["full"] is False and merged["names"] == newer["names"] and len(merged["replicas"]) == 2
    # A full one replaces everything before it.
    assert node_reports.merge_reports(newer, older) is older


def test_a_batch_of_reports_is_three_round_trips_and_never_moves_a_generation_back(
    django_assert_num_queries,
):
    nodes = placed(3, 6)
    Node.objects.filter(pk=nodes[2].pk).update(observed_generation=9)  # ahead of what it reports
    batch = {n.pk: report(list(Replica.objects.filter(node=n)), "Running", 5) for n in nodes}
    with mock.patch.object(node_reports, "_after_change"):
        with django_assert_num_queries(3):  # the rows read, the replicas written, the generations written
            node_reports.apply_node_reports(batch)
    assert set(Replica.objects.values_list("phase", flat=True)) == {"Running"}
    assert dict(Node.objects.values_list("name", "observed_generation")) == {"h0": 5, "h1": 5, "h2": 9}


def test_a_replica_marked_terminating_after_the_read_is_left_to_the_controller():
    (node,) = placed(1, 2)
    stopping, running = Replica.objects.filter(node=node).order_by("pk")
    real = node_reports._write_observed

    def controller_first(changes, now):
        # The controller stops one between the report's read and its write.
        Replica.objects.filter(pk=stopping.pk).update(phase=Replica.Phase.TERMINATING)
        return real(changes, now)

    with mock.patch.object(node_reports, "_write_observed", controller_first):
        node_reports.apply_node_report(node.pk, report([stopping, running], "Running", 1))
    assert dict(Replica.objects.values_list("name", "phase")) == {
        stopping.name: "Terminating",
        running.name: "Running",
    }


def test_what_agents_report_is_in_no_index_and_pages_keep_room_for_new_versions():
    """So that applying reports updates rows in place (PostgreSQL's HOT updates): an index on
    a reported column (as `phase` once was) makes every report write an entry in every index
    of the table (benchmarks/scheduler_throughput.py --pg-statements: that UPDATE took
    twice as long)."""
    import re

    from django.db import connection

    with connection.cursor() as cursor:
        # Whole definitions: a column in an expression or a partial index's WHERE counts too.
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'orchestrator_replica'")
        definitions = [row[0] for row in cursor.fetchall()]
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'orchestrator_replica'")
        (options,) = cursor.fetchone()
    assert any("node_id IS NULL" in d for d in definitions)  # the catalogue is read right
    reported = {*node_reports._OBSERVED, "updated_at"}
    assert [(d, c) for d in definitions for c in reported if re.search(rf"\b{c}\b", d)] == []
    assert "fillfactor=50" in (options or [])
