"""The worker's placement path on its own: the scheduler_throughput mix placed and committed
to a real PostgreSQL by reconcile batches run in this process, with no web process, no
agents and no reports competing for the CPU.

Sets up a private PostgreSQL and Redis, N Ready nodes shaped like the hollow fleet (tainted
as scheduler_throughput taints them) and the deployments (through the same serializer the
API uses), then runs the batches as `orchestrator.reconcile_pending` does (same batch size,
one snapshot scan per batch, desired sets published to the channel layer: in production
the worker does that part, here this process does it too). Prints one JSON
object: `placements_per_s` (replicas committed with a node per second) and, in the same
run, the reference `pure_placements_per_s` (the same mix through `schedule()` alone, no
database: benchmarks/placement_pure.py). `--profile FILE` writes a cProfile of the batches.

    .venv/bin/python benchmarks/placement_db.py [--nodes 5000] [--replicas 10000] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def log(message: str) -> None:
    print(f"[placement_db] {message}", file=sys.stderr, flush=True)


def fleet_arguments(doc: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that build a fleet in process (this one's, and those of
    report_apply.py and dashboard_scale.py): --nodes, --replicas, --seed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--replicas", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    return parser


def print_run(run, *args) -> None:
    """`run(*args)` against a private PostgreSQL and Redis; its result as one JSON line."""
    from tests.harness.plugin import start_services

    services = start_services()
    try:
        result = run(*args)
    finally:
        services.stop()
    print(json.dumps(result))


def main() -> None:
    parser = fleet_arguments(__doc__)
    parser.add_argument("--profile", help="write a cProfile of the reconcile batches here")
    print_run(run, parser.parse_args())


def run(args) -> dict:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from placement_pure import run as pure_run
    from scheduler_throughput import deployment_bodies

    from orchestrator.models import Deployment, Namespace, Replica

    log(f"creating {args.nodes} nodes")
    create_nodes(args.nodes, args.seed)

    bodies = deployment_bodies(args.replicas, args.seed, set())
    log(f"creating {len(bodies)} deployments ({args.replicas} replicas)")
    ids = create_deployments(bodies)

    profiler = cProfile.Profile() if args.profile else None
    log("placing")
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    place_all(ids)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    elapsed = time.perf_counter() - started
    placed = Replica.objects.filter(node__isnull=False).count()
    pending = Replica.objects.filter(node__isnull=True).count()
    if placed + pending != args.replicas:
        raise SystemExit(f"placement_db: {placed + pending} replicas exist, {args.replicas} wanted")
    log(f"{placed} placed, {pending} pending in {elapsed:.2f} s")

    pure_s, _ = pure_run(args, min_nodes_to_score=100)  # the reference: schedule() alone
    return {
        "nodes": args.nodes,
        "replicas": args.replicas,
        "deployments": Deployment.objects.count(),
        "placed": placed,
        "pending": pending,
        "placing_s": round(elapsed, 2),
        "placements_per_s": round(placed / elapsed, 1),
        "pure_placements_per_s": round(args.replicas / pure_s, 1),
        "namespaces": Namespace.objects.count(),
    }


def create_nodes(count: int, seed: int) -> None:
    """`count` Ready nodes shaped like the hollow fleet, tainted as scheduler_throughput taints them."""
    from scheduler_throughput import TAINT_GPU, TAINT_SPOT

    from agent.hollow import fleet
    from nodes.models import Node

    nodes = []
    for i, profile in enumerate(fleet(count, seed=seed)):
        taints = ([TAINT_GPU] if i % 20 == 7 else []) + ([TAINT_SPOT] if i % 25 == 3 else [])
        nodes.append(
            Node(
                name=profile.name,
                status=Node.Status.READY,
                agent_labels=dict(profile.labels),
                taints=taints,
                images=list(profile.images),
                capacity_cpu=profile.cpu_millis,
                capacity_memory=profile.memory_bytes,
            )
        )
    Node.objects.bulk_create(nodes, batch_size=1000)


def place_all(ids: list[int]) -> None:
    """Reconcile these deployments in batches, as orchestrator.reconcile_pending does, until
    every pass is done (a pass stops at BURST_REPLICAS: its deployment goes again)."""
    from orchestrator.controllers.deployment import AGAIN_NOW, Effects, reconcile_deployment
    from orchestrator.scheduling.snapshot import snapshot_held
    from orchestrator.tasks import BATCH

    todo = list(ids)
    while todo:
        again = []
        for start in range(0, len(todo), BATCH):
            effects = Effects()
            with snapshot_held():
                for pk in todo[start : start + BATCH]:
                    if reconcile_deployment(pk, effects) == AGAIN_NOW:
                        again.append(pk)
            effects.flush()
        todo = again


def create_deployments(bodies) -> list[int]:
    """Through the API's serializer (validation included), without HTTP."""
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIRequestFactory

    from orchestrator.models import Namespace
    from web.api.deployments import DeploymentSerializer

    user = get_user_model().objects.create_user("bench", password=None)
    namespace, _ = Namespace.objects.get_or_create(name="default")
    request = APIRequestFactory().post("/")
    request.user = user
    ids = []
    for body in bodies:
        serializer = DeploymentSerializer(data=body, context={"namespace": namespace, "request": request})
        serializer.is_valid(raise_exception=True)
        ids.append(serializer.save().pk)
    return ids


if __name__ == "__main__":
    main()
