"""Filters: each says why a node cannot take a replica, or None when it can.

Static filters depend only on the node and the deployment, so placement runs them once
per batch. Dynamic ones depend on what is already placed, which only grows within a
batch of identical replicas: a node they reject stays rejected for the rest of it.
"""

from __future__ import annotations

from orchestrator.scheduling.model import NodeInfo, PlacementSpec

# --- static ---------------------------------------------------------------------------------


def node_ready(node: NodeInfo, spec: PlacementSpec) -> str | None:
    return None if node.ready else "node not ready"


def node_schedulable(node: NodeInfo, spec: PlacementSpec) -> str | None:
    return "node cordoned" if node.unschedulable else None


def node_selector(node: NodeInfo, spec: PlacementSpec) -> str | None:
    for key, value in spec.node_selector:
        if node.labels.get(key) != value:
            return "didn't match node selector"
    return None


def node_affinity(node: NodeInfo, spec: PlacementSpec) -> str | None:
    for expression in spec.required:
        if not expression.matches(node.labels):
            return "didn't match node affinity"
    return None


def taints(node: NodeInfo, spec: PlacementSpec) -> str | None:
    for taint in node.taints:
        if taint.effect in ("NoSchedule", "NoExecute") and not spec.tolerates(taint):
            return f"untolerated taint {taint}"
    return None


def topology_labels(node: NodeInfo, spec: PlacementSpec) -> str | None:
    for constraint in spec.topology_spread:
        if constraint.hard and constraint.topology_key not in node.labels:
            return f"no label {constraint.topology_key} for topology spread"
    return None


STATIC = (node_ready, node_schedulable, node_selector, node_affinity, taints, topology_labels)

# --- dynamic --------------------------------------------------------------------------------


def max_per_node(node: NodeInfo, spec: PlacementSpec) -> str | None:
    if spec.max_per_node is not None and node.deployment_counts[spec.deployment_id] >= spec.max_per_node:
        return "max per node reached"
    return None


def resources_fit(node: NodeInfo, spec: PlacementSpec) -> str | None:
    if spec.cpu and node.requested_cpu + spec.cpu > node.allocatable_cpu:
        return "insufficient cpu"
    if spec.memory and node.requested_memory + spec.memory > node.allocatable_memory:
        return "insufficient memory"
    return None


def host_ports(node: NodeInfo, spec: PlacementSpec) -> str | None:
    clash = spec.host_ports & node.host_ports
    if clash:
        port, protocol = min(clash)
        return f"host port {port}/{protocol} in use"
    return None


DYNAMIC = (max_per_node, resources_fit, host_ports)


def first_rejection(filters, node: NodeInfo, spec: PlacementSpec) -> str | None:
    for check in filters:
        reason = check(node, spec)
        if reason:
            return reason
    return None
