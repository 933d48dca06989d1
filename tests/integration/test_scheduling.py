"""The scheduler against PostgreSQL: placement fields through the API, concurrent schedulers
never over-committing a node, evictions for NoExecute taints."""

import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from nodes.models import Node
from orchestrator import services
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Deployment, Namespace, Replica

URL = "/api/v1/namespaces/default/deployments/"
BASE = {"name": "web", "image": "busybox:1", "replicas": 1}
PLACEMENT = {
    "strategy": "binpack",
    "node_selector": {"disk": "ssd"},
    "affinity": {
        "required": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
        "preferred": [{"weight": 50, "match": {"key": "zone", "operator": "In", "values": ["a"]}}],
    },
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "toleration_seconds": 30},
    ],
    "topology_spread": [{"topology_key": "zone", "max_skew": 1, "when_unsatisfiable": "DoNotSchedule"}],
    "max_per_node": 2,
}


def test_placement_fields_round_trip(api):
    response = api.post(URL, {**BASE, **PLACEMENT}, format="json")
    assert response.status_code == 201, response.content
    body = api.get(URL + "web/").json()
    for field, value in PLACEMENT.items():
        if field == "tolerations":
            assert body[field][0] == {**value[0], "toleration_seconds": None}
            assert body[field][1] == {**value[1], "value": ""}
        elif field == "affinity":
            assert body[field]["required"] == value["required"]
            assert body[field]["preferred"] == value["preferred"]
        else:
            assert body[field] == value, field


def test_defaults(api):
    body = api.post(URL, BASE, format="json").json()
    assert body["strategy"] == "spread" and body["node_selector"] == {} and body["max_per_node"] is None


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"strategy": "random"}, "strategy", "not a valid choice"),
        ({"node_selector": {"bad key!": "x"}}, "node_selector", "not a valid label key"),
        ({"node_selector": {"zone": "x" * 64}}, "node_selector", "at most 63"),
        (
            {"affinity": {"required": [{"key": "zone", "operator": "Near", "values": ["a"]}]}},
            "affinity",
            "not a valid choice",
        ),
        ({"affinity": {"required": [{"key": "zone", "operator": "In"}]}}, "affinity", "at least one value"),
        (
            {"affinity": {"required": [{"key": "zone", "operator": "Exists", "values": ["a"]}]}},
            "affinity",
            "takes no values",
        ),
        (
            {"affinity": {"preferred": [{"weight": -5, "match": {"key": "z", "operator": "Exists"}}]}},
            "affinity",
            "greater than or equal to 1",
        ),
        (
            {"affinity": {"preferred": [{"weight": 101, "match": {"key": "z", "operator": "Exists"}}]}},
            "affinity",
            "less than or equal to 100",
        ),
        ({"affinity": {"mandatory": []}}, "affinity", "unknown field"),
        ({"tolerations": [{"key": "a", "operator": "Matches"}]}, "tolerations", "not a valid choice"),
        ({"tolerations": [{"key": "a", "operator": "Exists", "value": "x"}]}, "tolerations", "must be empty"),
        ({"tolerations": [{"operator": "Equal", "value": "x"}]}, "tolerations", "is required"),
        ({"tolerations": [{"key": "a", "effect": "Sometimes"}]}, "tolerations", "not a valid choice"),
        (
            {"tolerations": [{"key": "a", "effect": "NoSchedule", "toleration_seconds": 5}]},
            "tolerations",
            "only applies to effect NoExecute",
        ),
        (
            {"tolerations": [{"key": "a", "effect": "NoExecute", "toleration_seconds": -1}]},
            "tolerations",
            "greater than or equal to 0",
        ),
        (
            {"topology_spread": [{"topology_key": "zone", "max_skew": 0}]},
            "topology_spread",
            "greater than or equal to 1",
        ),
        (
            {"topology_spread": [{"topology_key": "zone", "when_unsatisfiable": "Maybe"}]},
            "topology_spread",
            "not a valid choice",
        ),
        (
            {"topology_spread": [{"topology_key": "zone"}, {"topology_key": "zone"}]},
            "topology_spread",
            "twice",
        ),
        ({"max_per_node": 0}, "max_per_node", "greater than or equal to 1"),
    ],
)
def test_bad_placement_input_names_the_field(api, change, field, words):
    response = api.post(URL, {**BASE, **change}, format="json")
    assert response.status_code == 400, response.content
    assert words in str(response.json()[field]), response.json()
    assert not Deployment.objects.exists()


def make_nodes(count, cpu=1000, memory=2**30, **fields):
    return [
        Node.objects.create(
            name=f"n{i}", status=Node.Status.READY, capacity_cpu=cpu, capacity_memory=memory, **fields
        )
        for i in range(count)
    ]


def deploy(name, replicas, **spec):
    body = {"name": name, "image": "busybox:1", "replicas": replicas, **spec}
    return services.do_create_deployment(Namespace.objects.get(name="default"), body, None)


def run_concurrently(work, count):
    """Run `work(i)` in `count` threads at once; re-raise the first error."""
    errors = []

    def target(i):
        try:
            work(i)
        except Exception as exc:  # a thread's exception is otherwise lost
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors


@pytest.mark.django_db(transaction=True)
def test_two_schedulers_racing_for_the_same_room(monkeypatch):
    """Fault injection makes the race certain: both schedulers have read their snapshot
    before either commits, and both want the single node's last room. Exactly one wins;
    the other re-plans from a fresh snapshot and finds the node full."""
    from orchestrator.controllers import deployment as controller

    make_nodes(1, cpu=1000)
    first, second = deploy("a", 1, cpu_request=600), deploy("b", 1, cpu_request=600)
    both_read = threading.Barrier(2, timeout=20)
    real_claim = controller.claim_nodes
    calls = Counter()

    def claim_after_both_have_read(read_versions, **kwargs):
        calls[threading.get_ident()] += 1
        if calls[threading.get_ident()] == 1:
            both_read.wait()
        return real_claim(read_versions, **kwargs)

    monkeypatch.setattr(controller, "claim_nodes", claim_after_both_have_read)
    run_concurrently(lambda i: reconcile_deployment([first, second][i].pk), 2)
    assert Replica.objects.filter(node__isnull=False).aggregate(cpu=Sum("cpu_request"))["cpu"] == 600
    loser = Replica.objects.get(node__isnull=True)
    assert loser.message == "0/1 nodes available: 1 insufficient cpu"
    assert sum(calls.values()) == 3  # the loser claimed twice: once lost, once with nothing to place


@pytest.mark.django_db(transaction=True)
def test_claims_of_a_later_round_skip_nodes_held_elsewhere_rather_than_deadlock():
    """Two passes each hold a node won in a first round, then each claims the other's: a
    wait would be a deadlock (PostgreSQL would abort one). Each loses that node at once."""
    from django.db import transaction

    from orchestrator.scheduling.commit import claim_nodes

    first, second = make_nodes(2)
    versions = {first.pk: first.resource_version, second.pk: second.resource_version}
    both_hold = threading.Barrier(2, timeout=20)
    results = {}

    def scheduler(i):
        mine, theirs = (first.pk, second.pk) if i == 0 else (second.pk, first.pk)
        with transaction.atomic():
            held = claim_nodes({mine: versions[mine]})
            both_hold.wait()
            results[i] = (held, claim_nodes({theirs: versions[theirs]}, holding=True))
            both_hold.wait()  # neither commits before both have claimed

    run_concurrently(scheduler, 2)
    assert results == {0: ({first.pk}, set()), 1: ({second.pk}, set())}
    assert sorted(Node.objects.values_list("resource_version", flat=True)) == [
        first.resource_version + 1,
        second.resource_version + 1,
    ]


@pytest.mark.django_db(transaction=True)
def test_a_claim_waiting_for_a_node_sees_the_version_committed_meanwhile():
    """A claim blocked on a node another scheduler holds compares against the version that
    scheduler commits, not the one its statement started with: it loses that node, wins
    the others, and bumps only those."""
    from django.db import transaction

    from orchestrator.scheduling.commit import claim_nodes

    first, second, gone = make_nodes(3)
    read = {n.pk: n.resource_version for n in (first, second, gone)}
    Node.objects.filter(pk=gone.pk).delete()
    holding, claimed = threading.Event(), {}

    def scheduler(i):
        if i == 0:
            with transaction.atomic():
                claimed[0] = claim_nodes({first.pk: read[first.pk]})
                holding.set()
                # Until the other claim is waiting for `first` (its lock shows in pg_locks).
                with connection.cursor() as cursor:
                    for _ in range(500):
                        cursor.execute("SELECT count(*) FROM pg_locks WHERE NOT granted")
                        if cursor.fetchone()[0]:
                            break
                        threading.Event().wait(0.01)
        else:
            holding.wait(20)
            claimed[1] = claim_nodes(read)

    run_concurrently(scheduler, 2)
    assert claimed == {0: {first.pk}, 1: {second.pk}}
    assert dict(Node.objects.values_list("pk", "resource_version")) == {
        first.pk: read[first.pk] + 1,
        second.pk: read[second.pk] + 1,
    }


@pytest.mark.django_db(transaction=True)
def test_concurrent_schedulers_never_over_commit_a_node():
    """Four workers place eight deployments at once onto nodes with room for less than
    half of what they ask; every node stays within its allocatable, and the room is used."""
    make_nodes(6, cpu=1000)
    deployments = [deploy(f"d{i}", 6, cpu_request=300) for i in range(8)]  # 48 asked, 18 fit (3 per node)
    barrier = threading.Barrier(4)

    def worker(i):
        barrier.wait()
        for deployment in deployments[i::4]:
            reconcile_deployment(deployment.pk)

    run_concurrently(worker, 4)
    usage = Replica.objects.filter(node__isnull=False).values("node_id").annotate(cpu=Sum("cpu_request"))
    assert all(row["cpu"] <= 1000 for row in usage), list(usage)
    assert Replica.objects.filter(node__isnull=False).count() == 18
    pending = Replica.objects.filter(node__isnull=True)
    assert pending.count() == 30
    assert {r.message for r in pending} == {"0/6 nodes available: 6 insufficient cpu"}


def test_pending_replicas_are_placed_when_room_appears(db, django_capture_on_commit_callbacks):
    make_nodes(1, memory=2**30)
    deployment = deploy("big", 1, memory_request=4 * 2**30)
    reconcile_deployment(deployment.pk)
    replica = Replica.objects.get()
    assert replica.node_id is None and replica.message == "0/1 nodes available: 1 insufficient memory"
    Node.objects.create(name="roomy", status=Node.Status.READY, capacity_cpu=1000, capacity_memory=8 * 2**30)
    reconcile_deployment(deployment.pk)
    replica.refresh_from_db()
    assert replica.node.name == "roomy" and replica.message == ""


def test_no_execute_taint_evicts_and_replaces_elsewhere(db):
    first, second = make_nodes(2)
    deployment = deploy("web", 2)
    reconcile_deployment(deployment.pk)
    Replica.objects.update(phase=Replica.Phase.RUNNING)
    Node.objects.filter(pk=first.pk).update(
        taints=[{"key": "maintenance", "value": "", "effect": "NoExecute"}]
    )
    reconcile_deployment(deployment.pk)
    evicted = Replica.objects.get(phase=Replica.Phase.TERMINATING)
    assert (
        evicted.node_id == first.pk and "evicted: node n0 has taint maintenance:NoExecute" in evicted.message
    )
    live = Replica.objects.exclude(phase=Replica.Phase.TERMINATING)
    assert Counter(r.node_id for r in live) == {second.pk: 2}


def test_no_execute_toleration_seconds_delay_the_eviction(db):
    (only,) = make_nodes(1)
    toleration = {"key": "maintenance", "operator": "Exists", "effect": "NoExecute", "toleration_seconds": 30}
    deployment = deploy("web", 1, tolerations=[toleration])
    reconcile_deployment(deployment.pk)
    added = timezone.now() - timedelta(seconds=10)
    taint = {"key": "maintenance", "value": "", "effect": "NoExecute", "time_added": added.isoformat()}
    Node.objects.filter(pk=only.pk).update(taints=[taint])
    recheck_in = reconcile_deployment(deployment.pk)
    assert 19 < recheck_in <= 20  # it stays for the rest of its 30 s, then another pass evicts it
    assert not Replica.objects.filter(phase=Replica.Phase.TERMINATING).exists()
    taint["time_added"] = (timezone.now() - timedelta(seconds=31)).isoformat()
    Node.objects.filter(pk=only.pk).update(taints=[taint])
    assert reconcile_deployment(deployment.pk) is None
    assert Replica.objects.filter(phase=Replica.Phase.TERMINATING).count() == 1


def test_selector_and_max_per_node(db):
    make_nodes(3)
    Node.objects.filter(name="n2").update(agent_labels={"disk": "ssd"})
    deployment = deploy("db", 3, node_selector={"disk": "ssd"}, max_per_node=2)
    reconcile_deployment(deployment.pk)
    placed = Replica.objects.filter(node__isnull=False)
    assert {r.node.name for r in placed} == {"n2"} and placed.count() == 2
    assert Replica.objects.get(node__isnull=True).message == (
        "0/3 nodes available: 2 didn't match node selector, 1 max per node reached"
    )


@pytest.mark.parametrize("terminating", [False, True], ids=["running", "terminating"])
def test_a_later_pass_counts_the_replicas_placed_before(db, terminating):
    """max_per_node across passes: the second pass sees what the first placed (a replica
    being stopped still holds its place until it is gone)."""
    make_nodes(2)
    deployment = deploy("db", 2, max_per_node=1)
    reconcile_deployment(deployment.pk)
    assert Replica.objects.filter(node__isnull=False).values("node").distinct().count() == 2
    if terminating:
        Replica.objects.update(phase=Replica.Phase.TERMINATING)
    Deployment.objects.filter(pk=deployment.pk).update(replicas=3)
    reconcile_deployment(deployment.pk)
    waiting = Replica.objects.filter(node__isnull=True)
    assert Counter(Replica.objects.filter(node__isnull=False).values_list("node", flat=True)) == {
        node.pk: 1 for node in Node.objects.all()
    }
    assert waiting.count() == (3 if terminating else 1)
    assert {r.message for r in waiting} == {"0/2 nodes available: 2 max per node reached"}
