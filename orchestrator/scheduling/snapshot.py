"""The scheduler's snapshot of the nodes, read from PostgreSQL in three aggregate queries."""

from __future__ import annotations

from django.db.models import BigIntegerField as BigInt
from django.db.models import Case, Count, F, Sum, Value, When

from nodes.models import Node
from orchestrator.models import Replica
from orchestrator.scheduling.model import DEFAULT_SCORE_CPU, DEFAULT_SCORE_MEMORY, NodeInfo, Taint


def _or_default(column: str, default: int):
    """The column's value, or `default` where it is 0 (a replica that requests nothing)."""
    return Case(When(**{column: 0}, then=Value(default)), default=F(column), output_field=BigInt())


def take_snapshot(deployment_id: int | None = None) -> list[NodeInfo]:
    """Every node with what occupies it: every replica placed there, Terminating ones
    included (their containers hold CPU, memory and ports until they are gone). Each node
    carries the resource_version it was read at, for the optimistic commit."""
    nodes: dict[int, NodeInfo] = {}
    columns = (
        "id", "name", "status", "unschedulable", "agent_labels", "user_labels", "taints",
        "capacity_cpu", "capacity_memory", "reserved_cpu", "reserved_memory", "images",
        "resource_version",
    )  # fmt: skip
    for row in Node.objects.values_list(*columns):
        (pk, name, status, cordoned, agent_labels, user_labels, taints, cpu, memory,
         reserved_cpu, reserved_memory, images, version) = row  # fmt: skip
        nodes[pk] = NodeInfo(
            id=pk,
            name=name,
            ready=status == Node.Status.READY,
            unschedulable=cordoned,
            labels={**agent_labels, **user_labels},
            taints=tuple(Taint(t["key"], t.get("value") or "", t["effect"]) for t in taints or []),
            allocatable_cpu=max(cpu - reserved_cpu, 0),
            allocatable_memory=max(memory - reserved_memory, 0),
            images=frozenset(images or ()),
            resource_version=version,
        )
    usage = (
        Replica.objects.filter(node__isnull=False)
        .values("node_id")
        .annotate(
            cpu=Sum("cpu_request"),
            memory=Sum("memory_request"),
            score_cpu=Sum(_or_default("cpu_request", DEFAULT_SCORE_CPU)),
            score_memory=Sum(_or_default("memory_request", DEFAULT_SCORE_MEMORY)),
        )
        .values_list("node_id", "cpu", "memory", "score_cpu", "score_memory")
    )
    for node_id, cpu, memory, score_cpu, score_memory in usage:
        node = nodes.get(node_id)
        if node is not None:
            node.requested_cpu, node.requested_memory = cpu, memory
            node.score_cpu, node.score_memory = score_cpu, score_memory
    ports = (
        Replica.objects.filter(node__isnull=False).exclude(host_ports=[]).values_list("node_id", "host_ports")
    )
    for node_id, host_ports in ports:
        if node_id in nodes:
            nodes[node_id].host_ports |= {(port, protocol) for port, protocol in host_ports}
    if deployment_id is not None:
        counts = (
            Replica.objects.filter(node__isnull=False, deployment_id=deployment_id)
            .values("node_id")
            .annotate(n=Count("id"))
            .values_list("node_id", "n")
        )
        for node_id, n in counts:
            if node_id in nodes:
                nodes[node_id].deployment_counts[deployment_id] = n
    return list(nodes.values())
