"""The scheduler's pure decision cost: the scheduler_throughput mix (same deployments, same
hollow fleet of labels, taints and sizes) placed in-process, with no database or network.

Measures `schedule()` over every deployment in turn against one snapshot of N nodes, as a
batch of passes does, and, in the same run, the reference: the same placement with every
eligible node scored (no window, as before the window existed). One JSON object on stdout.

    .venv/bin/python benchmarks/placement_pure.py [--nodes 5000] [--replicas 10000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from scheduler_throughput import TAINT_GPU, TAINT_SPOT, deployment_bodies

from agent.hollow import fleet
from orchestrator.quantities import parse_cpu, parse_memory
from orchestrator.scheduling.model import (
    Expression,
    NodeInfo,
    PlacementSpec,
    SpreadConstraint,
    Taint,
    Toleration,
)
from orchestrator.scheduling.placement import schedule


def nodes(count: int, seed: int) -> list[NodeInfo]:
    """The hollow fleet as the scheduler sees it, tainted as the throughput benchmark taints it."""
    built = []
    for i, profile in enumerate(fleet(count, seed=seed)):
        taints = ([TAINT_GPU] if i % 20 == 7 else []) + ([TAINT_SPOT] if i % 25 == 3 else [])
        built.append(
            NodeInfo(
                id=i + 1,
                name=profile.name,
                labels=dict(profile.labels),
                taints=tuple(Taint(t["key"], t["value"], t["effect"]) for t in taints),
                allocatable_cpu=profile.cpu_millis,
                allocatable_memory=profile.memory_bytes,
                images=frozenset(profile.images),
            )
        )
    return built


def _expression(data: dict) -> Expression:
    return Expression(data["key"], data["operator"], tuple(data.get("values", ())))


def specs(replicas: int, seed: int) -> list[tuple[PlacementSpec, int]]:
    out = []
    for i, body in enumerate(deployment_bodies(replicas, seed, set())):
        affinity = body.get("affinity") or {}
        resources = body.get("resources") or {}
        spec = PlacementSpec(
            deployment_id=i + 1,
            cpu=parse_cpu(resources["cpu"]) if resources.get("cpu") else 0,
            memory=parse_memory(resources["memory"]) if resources.get("memory") else 0,
            image=body["image"],
            strategy=body.get("strategy", "spread"),
            node_selector=tuple(sorted((body.get("node_selector") or {}).items())),
            required=tuple(_expression(e) for e in affinity.get("required", [])),
            preferred=tuple((p["weight"], _expression(p["match"])) for p in affinity.get("preferred", [])),
            tolerations=tuple(
                Toleration(t["key"], t["operator"], t.get("value", ""), t.get("effect", ""))
                for t in body.get("tolerations", [])
            ),
            topology_spread=tuple(
                SpreadConstraint(c["topology_key"], c["max_skew"], c["when_unsatisfiable"] == "DoNotSchedule")
                for c in body.get("topology_spread", [])
            ),
            max_per_node=body.get("max_per_node"),
        )
        out.append((spec, body["replicas"]))
    return out


def run(args, min_nodes_to_score: int) -> tuple[float, int]:
    fleet_nodes = nodes(args.nodes, args.seed)
    batch = specs(args.replicas, args.seed)
    started = time.perf_counter()
    unplaced = sum(schedule(spec, count, fleet_nodes, min_nodes_to_score=min_nodes_to_score).unplaced
                   for spec, count in batch)  # fmt: skip
    return time.perf_counter() - started, unplaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--replicas", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    windowed_s, unplaced = run(args, min_nodes_to_score=100)
    every_node_s, unplaced_every = run(args, min_nodes_to_score=10**9)
    print(
        json.dumps(
            {
                "nodes": args.nodes,
                "replicas": args.replicas,
                "deployments": len(specs(args.replicas, args.seed)),
                "schedule_s": round(windowed_s, 3),
                "placements_per_s": round(args.replicas / windowed_s),
                "unplaced": unplaced,
                # the reference, same run: every eligible node scored
                "every_node_scored_s": round(every_node_s, 3),
                "every_node_placements_per_s": round(args.replicas / every_node_s),
                "every_node_unplaced": unplaced_every,
            }
        )
    )


if __name__ == "__main__":
    main()
