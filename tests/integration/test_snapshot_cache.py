"""The worker's cached snapshot stays true to PostgreSQL through resource_version."""

import pytest
from django.db import connection
from django.db.models import F

from nodes.models import Node
from orchestrator import services
from orchestrator.controllers.node_reports import apply_node_report
from orchestrator.models import Namespace, Replica
from orchestrator.scheduling.snapshot import SnapshotCache, take_snapshot


def deployment(name="web", cpu=None):
    spec = {"name": name, "image": "busybox:1", "replicas": 0, "cpu_request": cpu}
    return services.do_create_deployment(Namespace.objects.get(name="default"), spec, None)


def place(dep, node, name, cpu):
    Replica.objects.create(
        namespace=dep.namespace, deployment=dep, node=node, name=name, revision="r", template={},
        cpu_request=cpu, phase=Replica.Phase.RUNNING,
    )  # fmt: skip
    Node.objects.filter(pk=node.pk).update(resource_version=F("resource_version") + 1)


def usage(nodes):
    return {n.name: n.requested_cpu for n in nodes}


def test_the_cache_reads_again_only_what_moved_and_matches_a_fresh_snapshot(
    ready_nodes, django_assert_max_num_queries
):
    h1, _h2 = ready_nodes("h1", "h2")
    dep = deployment()
    cache = SnapshotCache()
    assert usage(cache.take(dep.pk)) == {"h1": 0, "h2": 0}
    place(dep, h1, "web-a", 300)  # another worker placed here
    # versions; then h1's row, usage and ports; this deployment's counts
    with django_assert_max_num_queries(5):
        nodes = cache.take(dep.pk)
    assert usage(nodes) == {"h1": 300, "h2": 0}
    assert {n.name: n.deployment_counts[dep.pk] for n in nodes} == {"h1": 1, "h2": 0}
    assert usage(cache.take(dep.pk)) == usage(take_snapshot(dep.pk))

    # The agent reports the replica gone (after it was Terminating): its room is free again.
    Replica.objects.filter(name="web-a").update(phase=Replica.Phase.TERMINATING)
    apply_node_report(h1.pk, {"type": "status", "generation": 1, "replicas": []})
    assert usage(cache.take(dep.pk)) == {"h1": 0, "h2": 0}


def test_a_node_that_went_away_leaves_the_cache(ready_nodes):
    _h1, h2 = ready_nodes("h1", "h2")
    cache = SnapshotCache()
    assert len(cache.take()) == 2
    Node.objects.filter(pk=h2.pk).delete()
    assert [n.name for n in cache.take()] == ["h1"]


def test_counts_of_one_pass_do_not_reach_the_next(ready_nodes):
    """Each take counts only its own deployment's replicas: the counts a previous take set,
    and those schedule() added to nodes the cache then adopted, are gone."""
    h1, h2 = ready_nodes("h1", "h2")
    first, second = deployment("first"), deployment("second")
    cache = SnapshotCache()
    with cache.held():
        nodes = {n.name: n for n in cache.take(first.pk, placed={h1.pk: 2})}
        assert nodes["h1"].deployment_counts == {first.pk: 2}
        placed_onto = nodes["h2"]
        placed_onto.deployment_counts[first.pk] += 1  # as schedule() does when placing
        cache.forget([h2.pk])
        cache.adopt([placed_onto])  # the pass committed

        nodes = {n.name: n for n in cache.take(second.pk, placed={h2.pk: 1})}
        assert nodes["h2"] is placed_onto  # adopted, not read again
        assert {name: dict(n.deployment_counts) for name, n in nodes.items()} == {
            "h1": {},
            "h2": {second.pk: 1},
        }
        assert all(not n.deployment_counts for n in cache.take(None))


@pytest.mark.django_db(transaction=True)  # each write commits
def test_a_scan_reads_only_the_nodes_changed_since_the_last(ready_nodes):
    """Once the transactions that wrote them have ended, nodes whose version did not move
    are not read again: a heartbeat's write is not a version's."""
    h1, _h2, _h3 = ready_nodes("h1", "h2", "h3")
    cache = SnapshotCache()
    cache.take()  # the first scan reads every node's version
    Node.objects.filter(pk=h1.pk).update(
        user_labels={"disk": "ssd"}, resource_version=F("resource_version") + 1
    )
    Node.objects.filter(name="h2").update(status_message="heartbeat")  # not a version: not read
    with connection.execute_wrapper(scans := ScanRows()):
        nodes = {n.name: n for n in cache.take()}
    assert scans.rows == [1]  # h1's
    assert nodes["h1"].labels == {"disk": "ssd"}
    assert set(nodes) == {"h1", "h2", "h3"}


@pytest.mark.django_db(transaction=True)
def test_a_node_added_meanwhile_joins_the_cache(ready_nodes):
    ready_nodes("h1")
    cache = SnapshotCache()
    cache.take()
    ready_nodes("h2")
    assert sorted(n.name for n in cache.take()) == ["h1", "h2"]


class ScanRows:
    """Counts the node versions each version scan returns."""

    def __init__(self):
        self.rows = []

    def __call__(self, execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if "pg_snapshot_xmin" in sql:
            _count, ids, _versions, _xmin = context["cursor"].fetchone()
            self.rows.append(len(ids or ()))
            context["cursor"].scroll(0, mode="absolute")
        return result


@pytest.mark.django_db(transaction=True)
def test_a_change_committed_after_a_scan_that_could_not_see_it_is_read_by_the_next(ready_nodes, pg_connect):
    """The race an "everything newer than what I last saw" scan loses: a writer bumps a
    node's version before the scan and commits after it. The scan cannot see the change;
    the next one must, although the writer's transaction began before the first."""
    h1, h2 = ready_nodes("h1", "h2")
    cache = SnapshotCache()
    cache.take()
    with pg_connect() as writer:
        writer.execute(
            "UPDATE nodes_node SET unschedulable = true, resource_version = resource_version + 1 "
            "WHERE id = %s",
            [h1.pk],
        )
        # Another change, begun and committed later, while the first is still open.
        Node.objects.filter(pk=h2.pk).update(
            user_labels={"zone": "b"}, resource_version=F("resource_version") + 1
        )
        nodes = {n.name: n for n in cache.take()}
        assert not nodes["h1"].unschedulable  # not committed yet: invisible
        assert nodes["h2"].labels == {"zone": "b"}
        writer.commit()
    assert {n.name: n.unschedulable for n in cache.take()} == {"h1": True, "h2": False}


def test_transaction_ids_going_back_make_a_full_scan(ready_nodes):
    """Another database (a restore into a new cluster) starts its transaction ids again."""
    ready_nodes("h1", "h2")
    cache = SnapshotCache()
    cache.take()
    cache._since = str(2**62)  # what a scan of the old database would have left
    Node.objects.filter(name="h2").update(unschedulable=True, resource_version=F("resource_version") + 1)
    assert {n.name: n.unschedulable for n in cache.take()} == {"h1": False, "h2": True}
