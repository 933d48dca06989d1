"""Placing a batch of identical replicas: filter, then score, then pick the best node,
one replica at a time, updating the snapshot as it goes.

Pure: it reads only its arguments (and updates the NodeInfo objects it is given to
account for what it placed). The same input always gives the same placement: ties go to
the node whose name sorts first (in a scored window: the node nearest its start).

Cost, for thousands of nodes (docs/scheduling.md, "At scale"):
- Static filters and the label-based part of the score depend only on a node's labels,
  taints and status, so they run once per *group* of nodes that share those (a fleet has
  a few dozen groups, not thousands), as Nomad does with its computed node classes.
- As kube-scheduler does (`percentageOfNodesToScore`), a big cluster scores only a window
  of the eligible nodes: at 5,000 nodes about 10 %, never fewer than 100, never fewer than
  the replicas to place. The window starts at a point that depends on the deployment, so
  deployments spread over the whole fleet. Whatever the window cannot take goes through a
  pass over every eligible node, so a replica is only left Pending when no node can take it.
- Within a pass, a heap per topology domain with lazy invalidation: each placement is
  O(log nodes), not a pass over every node.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field

from orchestrator.scheduling import filters, scores
from orchestrator.scheduling.model import NodeInfo, PlacementSpec

MIN_NODES_TO_SCORE = 100  # kube-scheduler's minFeasibleNodesToFind


@dataclass
class Placement:
    node_ids: list[int] = field(default_factory=list)  # one per placed replica, in order
    nodes: dict[int, NodeInfo] = field(default_factory=dict)  # those nodes, as placing left them
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


def nodes_to_score(eligible: int, count: int, minimum: int = MIN_NODES_TO_SCORE) -> int:
    """How many eligible nodes to score for a batch of `count` replicas: kube-scheduler's
    adaptive share (50 % of a small cluster, one point less per 125 nodes, at least 5 %),
    at least `minimum`, and at least one node per replica."""
    if eligible <= minimum:
        return eligible
    share = max(5, 50 - eligible // 125)
    return min(eligible, max(minimum, eligible * share // 100, count))


class _Domain:
    """The candidate nodes of one topology domain (a value per spread constraint), best first."""

    def __init__(self) -> None:
        self.heap: list[tuple] = []  # (-score, tie-break, version, node)


class _Batch:
    """One call's working state: the per-group verdicts and the spread counts."""

    def __init__(self, spec: PlacementSpec) -> None:
        self.spec = spec
        self.constraints = spec.topology_spread
        self.verdicts: dict[int, str | None] = {}  # group -> static rejection, or None
        self.label_scores: dict[int, float] = {}  # group -> label-based score
        self.domain_keys: dict[int, tuple] = {}  # group -> its domain, one value per constraint
        self.domain_counts: list[Counter] = [Counter() for _ in self.constraints]

    def rejection(self, node: NodeInfo) -> str | None:
        group = node.group()
        if group not in self.verdicts:
            self.verdicts[group] = filters.first_rejection(filters.STATIC, node, self.spec)
        return self.verdicts[group]

    def eligible(self, nodes: list[NodeInfo]) -> list[NodeInfo]:
        """The nodes no static filter rejects (the hot loop at thousands of nodes: one
        lookup per node, the filters once per group)."""
        verdicts = self.verdicts
        for node in nodes:
            group = node._group if node._group is not None else node.group()
            if group not in verdicts:
                verdicts[group] = filters.first_rejection(filters.STATIC, node, self.spec)
        return [node for node in nodes if verdicts[node._group] is None]

    def domain(self, node: NodeInfo) -> tuple:
        group = node.group()
        key = self.domain_keys.get(group)
        if key is None:
            key = self.domain_keys[group] = tuple(node.labels.get(c.topology_key) for c in self.constraints)
        return key

    def score(self, node: NodeInfo) -> float:
        group = node.group()
        base = self.label_scores.get(group)
        if base is None:
            base = self.label_scores[group] = scores.label_score(node, self.spec)
        return base + scores.image_score(node, self.spec) + scores.dynamic_score(node, self.spec)

    def fill(self, candidates: list[NodeInfo], count: int, placement: Placement, *, windowed: bool) -> int:
        """Place up to `count` replicas on these candidates (adding to `placement`); returns
        how many were placed. Ties go to the node whose name sorts first, or in a window to
        the node nearest its start (so that windows spread equal deployments apart)."""
        spec, constraints = self.spec, self.constraints
        versions: dict[int, int] = {}
        domains: dict[tuple, _Domain] = {}
        tie: dict[int, object] = {}
        for position, node in enumerate(candidates):
            versions[node.id] = 0
            tie[node.id] = position if windowed else node.name
            key = self.domain(node)
            domain = domains.get(key)
            if domain is None:
                domain = domains[key] = _Domain()
            domain.heap.append((-self.score(node), tie[node.id], 0, node))
        for domain in domains.values():
            heapq.heapify(domain.heap)

        def best_in(domain: _Domain):
            heap = domain.heap
            while heap:
                _, _, version, node = heap[0]
                if version != versions[node.id]:
                    heapq.heappop(heap)  # an older score of a node placed on since
                    continue
                if filters.first_rejection(filters.DYNAMIC, node, spec):
                    heapq.heappop(heap)  # full for this batch: it only fills further
                    continue
                return heap[0]
            return None

        placed = 0
        while placed < count:
            minimums = [min(c.values(), default=0) for c in self.domain_counts]
            chosen, chosen_rank = None, None
            for key, domain in domains.items():
                skew, allowed = 0, True
                for i, constraint in enumerate(constraints):
                    if key[i] is None:
                        continue  # ScheduleAnyway and the node lacks the label: no preference
                    after = self.domain_counts[i][key[i]] + 1 - minimums[i]
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
                if chosen_rank is None or rank < chosen_rank:
                    chosen, chosen_rank = top, rank
            if chosen is None:
                break
            node = chosen[3]
            node.add(spec)
            placement.node_ids.append(node.id)
            placement.nodes[node.id] = node
            placed += 1
            versions[node.id] += 1
            key = self.domain(node)
            for i, value in enumerate(key):
                if value is not None:
                    self.domain_counts[i][value] += 1
            heapq.heappush(domains[key].heap, (-self.score(node), tie[node.id], versions[node.id], node))
        return placed


def schedule(
    spec: PlacementSpec, count: int, nodes: list[NodeInfo], *, min_nodes_to_score: int = MIN_NODES_TO_SCORE
) -> Placement:
    placement = Placement()
    batch = _Batch(spec)
    eligible = batch.eligible(nodes)

    # This deployment's replicas per domain, for each constraint, over the eligible nodes;
    # every domain of an eligible node counts, with no replica too.
    deployment = spec.deployment_id
    if batch.constraints:
        groups = {node._group: node for node in eligible}
        for node in groups.values():
            for i, value in enumerate(batch.domain(node)):
                if value is not None:
                    batch.domain_counts[i][value] += 0
        for node in eligible:
            placed_here = node.deployment_counts.get(deployment) if node.deployment_counts else None
            if placed_here:
                for i, value in enumerate(batch.domain(node)):
                    if value is not None:
                        batch.domain_counts[i][value] += placed_here

    window = nodes_to_score(len(eligible), count, min_nodes_to_score)
    left = count
    if window < len(eligible):
        start = (deployment * 2654435761) % len(eligible)  # deterministic, differs per deployment
        candidates = eligible[start : start + window] + eligible[: max(0, start + window - len(eligible))]
        left -= batch.fill(candidates, left, placement, windowed=True)
    if left:
        left -= batch.fill(eligible, left, placement, windowed=False)
    if left:
        placement.unplaced = left
        placement.reason = _reason(nodes, batch)
    return placement


def _reason(nodes: list[NodeInfo], batch: _Batch) -> str:
    """Why each node cannot take one more replica, counted. A node that passes every filter
    lost to the spread rule (the state only fills up within a batch, so a node rejected
    during it is rejected now for the same reason)."""
    spread = ", ".join(f"{c.topology_key} max skew {c.max_skew}" for c in batch.constraints if c.hard)
    counts: Counter = Counter()
    for node in nodes:
        reason = batch.rejection(node) or filters.first_rejection(filters.DYNAMIC, node, batch.spec)
        counts[reason or f"would break topology spread ({spread})"] += 1
    return explain(counts, len(nodes))
