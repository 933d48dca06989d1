"""Scores: higher is better. Each part is on a 0-100 scale and weighted, as in the
Kubernetes scheduling framework's default profile."""

from __future__ import annotations

from orchestrator.scheduling.model import NodeInfo, PlacementSpec

WEIGHTS = {
    "spread": {"allocation": 1, "replica_spread": 2},
    "binpack": {"allocation": 3, "replica_spread": 0},
}
PREFERRED_AFFINITY_WEIGHT = 2
IMAGE_LOCALITY_WEIGHT = 1
PREFER_NO_SCHEDULE_WEIGHT = 3


def static_score(node: NodeInfo, spec: PlacementSpec) -> float:
    """The part that does not change as replicas are placed: preferred affinity, image
    locality, and untolerated PreferNoSchedule taints (against)."""
    return label_score(node, spec) + image_score(node, spec)


def label_score(node: NodeInfo, spec: PlacementSpec) -> float:
    """Preferred affinity and untolerated PreferNoSchedule taints: what depends only on the
    node's labels and taints (the same for every node of a group)."""
    score = 0.0
    if spec.preferred:
        total = sum(weight for weight, _ in spec.preferred)
        matched = sum(weight for weight, expression in spec.preferred if expression.matches(node.labels))
        score += PREFERRED_AFFINITY_WEIGHT * 100.0 * matched / total
    untolerated = sum(1 for t in node.taints if t.effect == "PreferNoSchedule" and not spec.tolerates(t))
    score -= PREFER_NO_SCHEDULE_WEIGHT * 100.0 * untolerated
    return score


def image_score(node: NodeInfo, spec: PlacementSpec) -> float:
    """Image locality: the node already has the image."""
    return IMAGE_LOCALITY_WEIGHT * 100.0 if spec.image and spec.image in node.images else 0.0


def _fraction(used: int, allocatable: int) -> float:
    return 1.0 if allocatable <= 0 else min(used / allocatable, 1.0)


def dynamic_score(node: NodeInfo, spec: PlacementSpec) -> float:
    """The part that moves as replicas land: how full the node would be after this one
    (least allocated for `spread`, most allocated for `binpack`), and how many replicas of
    the same deployment it already runs (fewer is better when spreading)."""
    weights = WEIGHTS[spec.strategy]
    used = (
        _fraction(node.score_cpu + spec.score_cpu, node.allocatable_cpu)
        + _fraction(node.score_memory + spec.score_memory, node.allocatable_memory)
    ) / 2
    allocation = used if spec.strategy == "binpack" else 1.0 - used
    spread = 1.0 / (1 + node.deployment_counts[spec.deployment_id])
    return 100.0 * (weights["allocation"] * allocation + weights["replica_spread"] * spread)
