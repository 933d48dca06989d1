"""An in-memory snapshot of the nodes and what is already placed on them, for placement."""

from collections import defaultdict

from nodes.models import Node
from orchestrator.models import Replica
from orchestrator.scheduling.placement import NodeCandidate, Port


def host_ports_of(ports: list[dict] | None) -> frozenset[Port]:
    return frozenset((p["host"], p.get("protocol", "tcp")) for p in ports or [] if p.get("host"))


def take_snapshot() -> list[NodeCandidate]:
    """Every node with the replicas that occupy it (all but those on their way out)."""
    candidates = {
        node.id: NodeCandidate(
            id=node.id, name=node.name, ready=node.is_ready, unschedulable=node.unschedulable
        )
        for node in Node.objects.only("id", "name", "status", "unschedulable")
    }
    occupied = defaultdict(list)
    rows = Replica.objects.filter(node__isnull=False, phase__in=Replica.ACTIVE).values_list(
        "node_id", "deployment_id", "template"
    )
    for node_id, deployment_id, template in rows:
        occupied[node_id].append((deployment_id, template))
    for node_id, entries in occupied.items():
        node = candidates.get(node_id)
        if node is None:
            continue
        for deployment_id, template in entries:
            node.replica_count += 1
            node.deployment_counts[deployment_id] += 1
            node.host_ports |= host_ports_of(template.get("ports"))
    return list(candidates.values())
