"""A deployment's placement spec, as the pure scheduler reads it."""

from __future__ import annotations

from orchestrator.models import Deployment
from orchestrator.scheduling.model import Expression, PlacementSpec, SpreadConstraint, Toleration


def host_ports_of(ports: list[dict] | None) -> frozenset:
    return frozenset((p["host"], p.get("protocol", "tcp")) for p in ports or [] if p.get("host"))


def _expression(data: dict) -> Expression:
    return Expression(data["key"], data["operator"], tuple(data.get("values") or ()))


def placement_spec(deployment: Deployment) -> PlacementSpec:
    affinity = deployment.affinity or {}
    return PlacementSpec(
        deployment_id=deployment.pk,
        cpu=deployment.cpu_request or 0,
        memory=deployment.memory_request or 0,
        image=deployment.image,
        host_ports=host_ports_of(deployment.ports),
        strategy=deployment.strategy or "spread",
        node_selector=tuple(sorted((deployment.node_selector or {}).items())),
        required=tuple(_expression(e) for e in affinity.get("required", [])),
        preferred=tuple((p["weight"], _expression(p["match"])) for p in affinity.get("preferred", [])),
        tolerations=tuple(
            Toleration(
                key=t.get("key") or "",
                operator=t.get("operator") or "Equal",
                value=t.get("value") or "",
                effect=t.get("effect") or "",
                seconds=t.get("toleration_seconds"),
            )
            for t in deployment.tolerations or []
        ),
        topology_spread=tuple(
            SpreadConstraint(
                c["topology_key"], c.get("max_skew", 1), c.get("when_unsatisfiable") != "ScheduleAnyway"
            )
            for c in deployment.topology_spread or []
        ),
        max_per_node=deployment.max_per_node,
    )
