"""The scheduler's pure parts: every filter and score, and the placement loop's properties."""

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.scheduling import filters, scores
from orchestrator.scheduling.model import (
    Expression,
    NodeInfo,
    PlacementSpec,
    SpreadConstraint,
    Taint,
    Toleration,
)
from orchestrator.scheduling.placement import MIN_NODES_TO_SCORE, nodes_to_score, schedule

GI = 2**30


def node(name, i=None, cpu=4000, memory=8 * GI, labels=None, taints=(), **kwargs):
    return NodeInfo(
        id=i if i is not None else hash(name) % 10**6,
        name=name,
        labels=labels or {},
        taints=tuple(taints),
        allocatable_cpu=cpu,
        allocatable_memory=memory,
        **kwargs,
    )


def spec(**kwargs):
    return PlacementSpec(deployment_id=1, **kwargs)


# --- filters, table-driven -------------------------------------------------------------------

GPU = Taint("dedicated", "gpu", "NoSchedule")
CASES = [
    # (filter, node kwargs, spec kwargs, expected reason or None)
    (filters.node_ready, {"ready": False}, {}, "node not ready"),
    (filters.node_ready, {}, {}, None),
    (filters.node_schedulable, {"unschedulable": True}, {}, "node cordoned"),
    (filters.node_selector, {"labels": {"disk": "ssd"}}, {"node_selector": (("disk", "ssd"),)}, None),
    (
        filters.node_selector,
        {"labels": {"disk": "hdd"}},
        {"node_selector": (("disk", "ssd"),)},
        "didn't match node selector",
    ),
    (filters.node_selector, {}, {"node_selector": (("disk", "ssd"),)}, "didn't match node selector"),
    (
        filters.node_affinity,
        {"labels": {"zone": "a"}},
        {"required": (Expression("zone", "In", ("a", "b")),)},
        None,
    ),
    (
        filters.node_affinity,
        {"labels": {"zone": "c"}},
        {"required": (Expression("zone", "In", ("a", "b")),)},
        "didn't match node affinity",
    ),
    (
        filters.node_affinity,
        {"labels": {"zone": "c"}},
        {"required": (Expression("zone", "NotIn", ("a",)),)},
        None,
    ),
    (filters.node_affinity, {}, {"required": (Expression("zone", "NotIn", ("a",)),)}, None),
    (filters.node_affinity, {}, {"required": (Expression("gpu", "Exists"),)}, "didn't match node affinity"),
    (filters.node_affinity, {"labels": {"gpu": ""}}, {"required": (Expression("gpu", "Exists"),)}, None),
    (
        filters.node_affinity,
        {"labels": {"gpu": "1"}},
        {"required": (Expression("gpu", "DoesNotExist"),)},
        "didn't match node affinity",
    ),
    (filters.taints, {"taints": [GPU]}, {}, "untolerated taint dedicated=gpu:NoSchedule"),
    (filters.taints, {"taints": [GPU]}, {"tolerations": (Toleration("dedicated", "Equal", "gpu"),)}, None),
    (
        filters.taints,
        {"taints": [GPU]},
        {"tolerations": (Toleration("dedicated", "Equal", "tpu"),)},
        "untolerated taint dedicated=gpu:NoSchedule",
    ),
    (filters.taints, {"taints": [GPU]}, {"tolerations": (Toleration("dedicated", "Exists"),)}, None),
    (filters.taints, {"taints": [GPU]}, {"tolerations": (Toleration("", "Exists"),)}, None),
    (
        filters.taints,
        {"taints": [GPU]},
        {"tolerations": (Toleration("dedicated", "Exists", effect="NoExecute"),)},
        "untolerated taint dedicated=gpu:NoSchedule",
    ),
    (filters.taints, {"taints": [Taint("x", "", "PreferNoSchedule")]}, {}, None),
    (filters.taints, {"taints": [Taint("x", "", "NoExecute")]}, {}, "untolerated taint x:NoExecute"),
    (
        filters.topology_labels,
        {},
        {"topology_spread": (SpreadConstraint("zone"),)},
        "no label zone for topology spread",
    ),
    (filters.topology_labels, {}, {"topology_spread": (SpreadConstraint("zone", hard=False),)}, None),
    (filters.resources_fit, {"requested_cpu": 3900}, {"cpu": 200}, "insufficient cpu"),
    (filters.resources_fit, {"requested_cpu": 3800}, {"cpu": 200}, None),
    (filters.resources_fit, {"requested_memory": 8 * GI - 1}, {"memory": 2}, "insufficient memory"),
    (filters.resources_fit, {"requested_cpu": 4000}, {}, None),  # requests nothing: always fits
    (
        filters.host_ports,
        {"host_ports": {(80, "tcp")}},
        {"host_ports": frozenset({(80, "tcp")})},
        "host port 80/tcp in use",
    ),
    (filters.host_ports, {"host_ports": {(80, "udp")}}, {"host_ports": frozenset({(80, "tcp")})}, None),
    (
        filters.max_per_node,
        {"deployment_counts": Counter({1: 2})},
        {"max_per_node": 2},
        "max per node reached",
    ),
    (filters.max_per_node, {"deployment_counts": Counter({1: 1, 7: 5})}, {"max_per_node": 2}, None),
]


@pytest.mark.parametrize(("check", "node_kwargs", "spec_kwargs", "expected"), CASES)
def test_filter(check, node_kwargs, spec_kwargs, expected):
    assert check(node("n", **node_kwargs), spec(**spec_kwargs)) == expected


# --- scores ----------------------------------------------------------------------------------


def test_spread_prefers_the_emptier_node_and_binpack_the_fuller():
    empty, busy = node("a", score_cpu=0), node("b", score_cpu=3000, score_memory=6 * GI)
    assert scores.dynamic_score(empty, spec()) > scores.dynamic_score(busy, spec())
    assert scores.dynamic_score(busy, spec(strategy="binpack")) > scores.dynamic_score(
        empty, spec(strategy="binpack")
    )


def test_fewer_replicas_of_the_same_deployment_scores_higher():
    crowded = node("a", deployment_counts=Counter({1: 3}))
    assert scores.dynamic_score(node("b"), spec()) > scores.dynamic_score(crowded, spec())


@pytest.mark.parametrize(
    ("node_kwargs", "spec_kwargs", "expected"),
    [
        ({}, {}, 0),
        ({"images": frozenset({"web:1"})}, {"image": "web:1"}, 100),
        (
            {"labels": {"zone": "a"}},
            {"preferred": ((30, Expression("zone", "In", ("a",))), (10, Expression("disk", "Exists")))},
            2 * 75,
        ),
        ({"taints": (Taint("spot", "", "PreferNoSchedule"),)}, {}, -300),
        (
            {"taints": (Taint("spot", "", "PreferNoSchedule"),)},
            {"tolerations": (Toleration("spot", "Exists"),)},
            0,
        ),
    ],
)
def test_static_score(node_kwargs, spec_kwargs, expected):
    assert scores.static_score(node("n", **node_kwargs), spec(**spec_kwargs)) == pytest.approx(expected)


# --- the placement loop ----------------------------------------------------------------------


def test_spread_puts_replicas_evenly_and_binpack_fills_one_node_first():
    nodes = [node("a", 1), node("b", 2)]
    assert Counter(schedule(spec(cpu=500), 4, nodes).node_ids) == {1: 2, 2: 2}
    nodes = [node("a", 1), node("b", 2)]
    assert schedule(spec(cpu=1000, strategy="binpack"), 4, nodes).node_ids == [1, 1, 1, 1]


def test_unplaceable_replicas_say_why_per_node():
    nodes = [node("a", 1, ready=False), node("b", 2, taints=[GPU]), node("c", 3, memory=GI),
             node("d", 4, memory=GI)]  # fmt: skip
    placement = schedule(spec(memory=2 * GI), 2, nodes)
    assert placement.node_ids == [] and placement.unplaced == 2
    assert placement.reason == (
        "0/4 nodes available: 2 insufficient memory, 1 node not ready, "
        "1 untolerated taint dedicated=gpu:NoSchedule"
    )


def test_partial_placement_reports_the_rest():
    placement = schedule(spec(cpu=1500), 5, [node("a", 1, cpu=4000), node("b", 2, cpu=2000)])
    assert len(placement.node_ids) == 3 and placement.unplaced == 2
    assert placement.reason == "0/2 nodes available: 2 insufficient cpu"


def test_topology_spread_hard_leaves_replicas_pending_rather_than_skewing():
    nodes = [node("a1", 1, labels={"zone": "a"}), node("b1", 2, labels={"zone": "b"}, cpu=1000)]
    placement = schedule(spec(cpu=1000, topology_spread=(SpreadConstraint("zone", 1),)), 4, nodes)
    assert Counter(placement.node_ids) == {1: 2, 2: 1}  # zone b is full: a third in a would skew by 2
    assert placement.unplaced == 1 and "topology spread (zone max skew 1)" in placement.reason


def test_topology_spread_soft_still_places_everything():
    nodes = [node("a1", 1, labels={"zone": "a"}), node("b1", 2, labels={"zone": "b"}, cpu=1000)]
    constraint = SpreadConstraint("zone", 1, hard=False)
    assert len(schedule(spec(cpu=1000, topology_spread=(constraint,)), 4, nodes).node_ids) == 4


def test_topology_spread_counts_replicas_already_placed():
    nodes = [
        node("a1", 1, labels={"zone": "a"}, deployment_counts=Counter({1: 3})),
        node("b1", 2, labels={"zone": "b"}),
    ]
    assert schedule(spec(topology_spread=(SpreadConstraint("zone"),)), 3, nodes).node_ids == [2, 2, 2]


def test_preferred_affinity_and_image_locality_pull_replicas():
    nodes = [node("a", 1), node("b", 2, labels={"zone": "x"}), node("c", 3, images=frozenset({"app:1"}))]
    assert schedule(spec(preferred=((100, Expression("zone", "In", ("x",))),)), 1, nodes).node_ids == [2]
    assert schedule(
        spec(image="app:1"), 1, [node("a", 1), node("c", 3, images=frozenset({"app:1"}))]
    ).node_ids == [3]


def test_no_nodes_at_all_tells_what_to_do():
    assert "enroll" in schedule(spec(), 1, []).reason


# --- properties ------------------------------------------------------------------------------

node_lists = st.lists(
    st.builds(
        lambda i, cpu, mem, zone, used, ready: node(
            f"n{i:03d}",
            i,
            cpu=cpu,
            memory=mem * GI,
            labels={"zone": zone},
            requested_cpu=min(used, cpu),
            score_cpu=min(used, cpu),
            ready=ready,
        ),
        i=st.integers(0, 999),
        cpu=st.sampled_from([500, 1000, 2000, 4000]),
        mem=st.sampled_from([1, 2, 4]),
        zone=st.sampled_from(["a", "b", "c"]),
        used=st.integers(0, 3000),
        ready=st.booleans(),
    ),
    max_size=12,
    unique_by=lambda n: n.id,
)
specs = st.builds(
    lambda cpu, mem, strategy, skew, hard, per_node: spec(
        cpu=cpu,
        memory=mem * 2**28,
        strategy=strategy,
        max_per_node=per_node,
        topology_spread=(SpreadConstraint("zone", skew, hard),) if skew else (),
    ),
    cpu=st.sampled_from([0, 100, 250, 1000]),
    mem=st.integers(0, 8),
    strategy=st.sampled_from(["spread", "binpack"]),
    skew=st.sampled_from([0, 1, 2]),
    hard=st.booleans(),
    per_node=st.one_of(st.none(), st.integers(1, 3)),
)


def copy(nodes):
    fresh = {"deployment_counts": Counter(), "_group": None}
    return [NodeInfo(**{**n.__dict__, "host_ports": set(n.host_ports), **fresh}) for n in nodes]


@settings(max_examples=300, deadline=None)
@given(
    nodes=node_lists,
    placement_spec=specs,
    count=st.integers(0, 30),
    window=st.sampled_from([MIN_NODES_TO_SCORE, 1, 3]),
)
def test_placement_properties(nodes, placement_spec, count, window):
    """`window` small: the scored window is smaller than the cluster, as in a big one."""
    before = {n.id: (n.requested_cpu, n.requested_memory) for n in nodes}
    given = copy(nodes)
    placement = schedule(placement_spec, count, given, min_nodes_to_score=window)
    by_id = {n.id: n for n in nodes}
    placed = Counter(placement.node_ids)
    # The nodes it placed onto are handed back: the very objects it was given (and changed).
    assert {i: id(n) for i, n in placement.nodes.items()} == {n.id: id(n) for n in given if n.id in placed}
    # Everything is accounted for, with a reason for what is left.
    assert len(placement.node_ids) + placement.unplaced == count
    assert bool(placement.unplaced) == bool(placement.reason)
    for node_id, n in placed.items():
        chosen = by_id[node_id]
        # Only ready nodes, never beyond allocatable, never beyond max_per_node.
        assert chosen.ready
        cpu, memory = before[node_id]
        if placement_spec.cpu:
            assert cpu + n * placement_spec.cpu <= chosen.allocatable_cpu
        if placement_spec.memory:
            assert memory + n * placement_spec.memory <= chosen.allocatable_memory
        if placement_spec.max_per_node:
            assert n <= placement_spec.max_per_node
    # A hard spread constraint holds over the zones of the eligible (ready) nodes.
    for constraint in placement_spec.topology_spread:
        if constraint.hard:
            zones = {n.labels["zone"] for n in nodes if n.ready}
            per_zone = Counter({zone: 0 for zone in zones})
            for node_id, n in placed.items():
                per_zone[by_id[node_id].labels["zone"]] += n
            if per_zone:
                assert max(per_zone.values()) - min(per_zone.values()) <= constraint.max_skew
    # Same input, same placement.
    assert (
        schedule(placement_spec, count, copy(nodes), min_nodes_to_score=window).node_ids == placement.node_ids
    )


@settings(max_examples=150, deadline=None)
@given(nodes=node_lists, count=st.integers(1, 20), window=st.sampled_from([MIN_NODES_TO_SCORE, 1, 3]))
def test_spread_is_satisfied_whenever_it_can_be(nodes, count, window):
    """With room everywhere, a hard max_skew 1 spread places everything, evenly."""
    fresh = {"ready": True, "requested_cpu": 0, "deployment_counts": Counter(), "_group": None}
    roomy = [NodeInfo(**{**n.__dict__, **fresh}) for n in nodes]
    placement = schedule(
        spec(topology_spread=(SpreadConstraint("zone", 1),)), count, roomy, min_nodes_to_score=window
    )
    if roomy:
        assert placement.unplaced == 0
        zones = Counter({n.labels["zone"]: 0 for n in roomy})
        by_id = {n.id: n for n in roomy}
        zones.update(by_id[i].labels["zone"] for i in placement.node_ids)
        assert max(zones.values()) - min(zones.values()) <= 1


# --- at scale: the scored window ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("eligible", "count", "expected"),
    [
        (0, 5, 0),
        (80, 5, 80),  # a small cluster: every node
        (1000, 5, 420),  # 42 %
        (5000, 10, 500),  # 10 %, as kube-scheduler at 5,000 nodes
        (5000, 800, 800),  # at least one node per replica
        (100_000, 10, 5000),  # never below 5 %
        (150, 5, 100),  # never below the minimum
    ],
)
def test_nodes_to_score(eligible, count, expected):
    assert nodes_to_score(eligible, count) == expected


def big_cluster(n, **kwargs):
    return [node(f"n{i:05d}", i, **kwargs) for i in range(n)]


def test_a_big_cluster_scores_only_a_window():
    nodes = big_cluster(2000)
    placement = schedule(spec(cpu=100), 10, nodes)
    assert placement.unplaced == 0 and len(set(placement.node_ids)) == 10
    # Another deployment's window starts elsewhere in the fleet.
    other = schedule(PlacementSpec(deployment_id=2, cpu=100), 10, big_cluster(2000))
    assert set(other.node_ids).isdisjoint(placement.node_ids)


def test_what_the_window_cannot_take_goes_anywhere_with_room():
    """Every node is full but one, far from any window: it still gets the replica."""
    nodes = big_cluster(2000, requested_cpu=4000)
    nodes[1234].requested_cpu = 0
    placement = schedule(spec(cpu=1000), 5, nodes)
    assert placement.node_ids == [1234] * 4
    assert placement.unplaced == 1
    assert placement.reason == "0/2000 nodes available: 2000 insufficient cpu"


def test_the_window_counts_spread_over_every_eligible_node():
    """Replicas already placed outside the window still count towards the skew."""
    nodes = big_cluster(1000, labels={"zone": "a"}) + [
        node(f"z{i:04d}", 5000 + i, labels={"zone": "b"}) for i in range(1000)
    ]
    for n in nodes[1000:1010]:
        n.deployment_counts[1] = 1  # 10 replicas in zone b already
    placement = schedule(spec(topology_spread=(SpreadConstraint("zone", 1),)), 12, nodes)
    by_id = {n.id: n for n in nodes}
    zones = Counter(by_id[i].labels["zone"] for i in placement.node_ids)
    assert zones == {"a": 11, "b": 1}  # 11 + 0 in a, 1 + 10 in b
