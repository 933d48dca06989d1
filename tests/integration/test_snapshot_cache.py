"""The worker's cached snapshot stays true to PostgreSQL through resource_version."""

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
