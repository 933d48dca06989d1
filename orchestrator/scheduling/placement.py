"""Placing a batch of identical replicas: filter, then score, then pick the best node,
one replica at a time, updating the snapshot as it goes.

Pure: it reads only its arguments (and updates the NodeInfo objects it is given to
account for what it placed). The same input always gives the same placement: ties go to
the node whose name sorts first.

Cost: static filters and scores once per node, then a heap per topology domain with lazy
invalidation, so each placement is O(log nodes) rather than a pass over every node.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from orchestrator.scheduling import filters, scores
from orchestrator.scheduling.model import NodeInfo, PlacementSpec


@dataclass
class Placement:
    node_ids: list[int] = field(default_factory=list)  # one per placed replica, in order
    unplaced: int = 0
    reason: str = ""  # why the unplaced ones could not go anywhere, for people


def explain(reasons: Counter, total: int) -> str:
    """kube-scheduler's style: '0/5 nodes available: 3 insufficient memory, 2 node cordoned'."""
    if total == 0:
        return "0/0 nodes available: no server has joined yet; enroll one with an agent and a join token"
    parts = ", ".join(
        f"{n} {reason}" for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    )
    return f"0/{total} nodes available: {parts}"


class _Domain:
    """The nodes of one topology domain (one value per spread constraint's key), best first."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, str, int, NodeInfo]] = []

    def push(self, node: NodeInfo, score: float, version: int) -> None:
        heapq.heappush(self.heap, (-score, node.name, version, node))


def schedule(spec: PlacementSpec, count: int, nodes: list[NodeInfo]) -> Placement:
    placement = Placement()
    reasons: dict[int, str] = {}
    eligible: list[NodeInfo] = []
    for node in nodes:
        reason = filters.first_rejection(filters.STATIC, node, spec)
        if reason:
            reasons[node.id] = reason
        else:
            eligible.append(node)

    constraints = spec.topology_spread
    # Replicas of this deployment per domain, for each constraint, over the eligible nodes.
    domain_counts: list[Counter] = [Counter() for _ in constraints]
    for node in eligible:
        for i, constraint in enumerate(constraints):
            value = node.labels.get(constraint.topology_key)
            if value is not None:
                domain_counts[i][value] += node.deployment_counts[spec.deployment_id]

    static = {node.id: scores.static_score(node, spec) for node in eligible}
    versions: dict[int, int] = {}
    domains: dict[tuple, _Domain] = {}
    for node in eligible:
        key = tuple(node.labels.get(c.topology_key) for c in constraints)
        versions[node.id] = 0
        domains.setdefault(key, _Domain()).push(node, static[node.id] + scores.dynamic_score(node, spec), 0)

    def best_in(domain: _Domain):
        while domain.heap:
            _, _, version, node = domain.heap[0]
            if version != versions[node.id]:
                heapq.heappop(domain.heap)  # an older score of a node placed on since
                continue
            reason = filters.first_rejection(filters.DYNAMIC, node, spec)
            if reason:
                heapq.heappop(domain.heap)  # full for this batch: it only fills further
                reasons[node.id] = reason
                continue
            return domain.heap[0]
        return None

    for _ in range(count):
        minimums = [min(c.values(), default=0) for c in domain_counts]
        chosen, chosen_key = None, None
        for key, domain in domains.items():
            skew, allowed = 0, True
            for i, constraint in enumerate(constraints):
                if key[i] is None:
                    continue  # ScheduleAnyway and the node lacks the label: no preference
                after = domain_counts[i][key[i]] + 1 - minimums[i]
                if constraint.hard and after > constraint.max_skew:
                    allowed = False
                    break
                skew += after
            if not allowed:
                continue
            top = best_in(domain)
            if top is None:
                continue
            rank = (skew, top[0], top[1])
            if chosen_key is None or rank < chosen_key:
                chosen, chosen_key = top, rank
        if chosen is None:
            placement.unplaced = count - len(placement.node_ids)
            placement.reason = _reason(nodes, eligible, reasons, constraints)
            break
        node = chosen[3]
        node.add(spec)
        placement.node_ids.append(node.id)
        versions[node.id] += 1
        key = tuple(node.labels.get(c.topology_key) for c in constraints)
        for i, value in enumerate(key):
            if value is not None:
                domain_counts[i][value] += 1
        domains[key].push(node, static[node.id] + scores.dynamic_score(node, spec), versions[node.id])
    return placement


def _reason(nodes, eligible, reasons: dict[int, str], constraints) -> str:
    counts: Counter = Counter()
    spread = ", ".join(f"{c.topology_key} max skew {c.max_skew}" for c in constraints if c.hard)
    for node in nodes:
        # A node that passed every filter but was never reached lost to the spread rule.
        counts[reasons.get(node.id) or f"would break topology spread ({spread})"] += 1
    return explain(counts, len(nodes))
