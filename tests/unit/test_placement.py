from collections import Counter

from orchestrator.scheduling.placement import NodeCandidate, PlacementRequest, place_replicas


def nodes(*specs):
    return [
        NodeCandidate(id=i, name=name, ready=ready, unschedulable=cordoned)
        for i, (name, ready, cordoned) in enumerate(specs, start=1)
    ]


def test_replicas_spread_over_ready_nodes():
    result = place_replicas(
        [PlacementRequest(f"r{i}", 7) for i in range(4)], nodes(("a", True, False), ("b", True, False))
    )
    assert Counter(result.assignments.values()) == Counter({1: 2, 2: 2})
    assert result.unplaced == {}


def test_spread_counts_the_deployment_before_total_load():
    candidates = nodes(("a", True, False), ("b", True, False))
    candidates[0].replica_count = 0
    candidates[1].replica_count = 10  # busy with other deployments
    candidates[0].deployment_counts[7] = 1
    result = place_replicas([PlacementRequest("r", 7)], candidates)
    assert result.assignments == {"r": 2}


def test_least_loaded_breaks_ties_for_a_new_deployment():
    candidates = nodes(("a", True, False), ("b", True, False))
    candidates[0].replica_count = 3
    assert place_replicas([PlacementRequest("r", 1)], candidates).assignments == {"r": 2}


def test_not_ready_and_cordoned_nodes_are_skipped_with_a_reason():
    result = place_replicas(
        [PlacementRequest("r", 1)], nodes(("a", False, False), ("b", True, True), ("c", False, False))
    )
    assert result.assignments == {}
    assert result.unplaced["r"] == "0/3 nodes available: 2 node not ready, 1 node cordoned"


def test_host_ports_conflict_within_a_batch():
    request = lambda name: PlacementRequest(name, 1, frozenset({(8080, "tcp")}))  # noqa: E731
    result = place_replicas(
        [request("r1"), request("r2"), request("r3")], nodes(("a", True, False), ("b", True, False))
    )
    assert sorted(result.assignments.values()) == [1, 2]
    assert result.unplaced == {"r3": "0/2 nodes available: 2 host port 8080/tcp in use"}


def test_no_nodes_at_all_tells_what_to_do():
    result = place_replicas([PlacementRequest("r", 1)], [])
    assert "enroll" in result.unplaced["r"]
