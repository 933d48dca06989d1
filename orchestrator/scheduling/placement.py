"""Where replicas go: a pure filter-then-score pass over a snapshot of the nodes.

This is the seam for the full scheduler: today it filters on readiness, cordons and
host-port conflicts, then scores least-loaded with spread (fewest replicas of the same
deployment first, then fewest replicas overall). It reads nothing but its arguments.
"""

from collections import Counter
from dataclasses import dataclass, field

Port = tuple[int, str]  # (host port, protocol)


@dataclass
class NodeCandidate:
    id: int
    name: str
    ready: bool
    unschedulable: bool
    replica_count: int = 0
    host_ports: set[Port] = field(default_factory=set)
    deployment_counts: Counter = field(default_factory=Counter)


@dataclass(frozen=True)
class PlacementRequest:
    name: str
    deployment_id: int
    host_ports: frozenset[Port] = frozenset()


@dataclass
class PlacementResult:
    assignments: dict[str, int] = field(default_factory=dict)  # replica name -> node id
    unplaced: dict[str, str] = field(default_factory=dict)  # replica name -> why, for people


def _rejection(node: NodeCandidate, request: PlacementRequest) -> str | None:
    if not node.ready:
        return "node not ready"
    if node.unschedulable:
        return "node cordoned"
    clash = sorted(request.host_ports & node.host_ports)
    if clash:
        port, protocol = clash[0]
        return f"host port {port}/{protocol} in use"
    return None


def explain(reasons: Counter, total: int) -> str:
    """kube-scheduler's style: '0/5 nodes available: 3 node not ready, 2 node cordoned'."""
    if total == 0:
        return "0/0 nodes available: no server has joined yet; enroll one with an agent and a join token"
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(reasons.items(), key=lambda i: -i[1]))
    return f"0/{total} nodes available: {parts}"


def place_replicas(requests: list[PlacementRequest], nodes: list[NodeCandidate]) -> PlacementResult:
    """Place each request on the best feasible node, updating the snapshot as it goes so
    later requests of the same batch see the earlier ones."""
    result = PlacementResult()
    for request in requests:
        reasons: Counter = Counter()
        best: NodeCandidate | None = None
        best_key = None
        for node in nodes:
            rejection = _rejection(node, request)
            if rejection:
                reasons[rejection] += 1
                continue
            key = (node.deployment_counts[request.deployment_id], node.replica_count, node.name)
            if best_key is None or key < best_key:
                best, best_key = node, key
        if best is None:
            result.unplaced[request.name] = explain(reasons, len(nodes))
            continue
        result.assignments[request.name] = best.id
        best.replica_count += 1
        best.deployment_counts[request.deployment_id] += 1
        best.host_ports |= request.host_ports
    return result
