"""Applying agents' status reports on its own: what a web process pays per node report.

Sets up a private PostgreSQL and Redis, N Ready nodes and the scheduler_throughput mix of
deployments placed on them (as benchmarks/placement_db.py does), then plays what the
nodes' agents report once their desired sets arrive, the way it reaches the control plane
in scheduler_throughput's window: per node, a partial report of its new replicas being
created ("Pending", with the activity), then one of them Running, each following the
node's newest generation. The reports are applied in batches of `--batch` nodes, as a busy
web process batches them (web/consumers/reports.py), by
`orchestrator.controllers.node_reports.apply_node_reports`.

Prints one JSON object: `us_per_node_report` (wall time per node report, this process and
PostgreSQL on the same machine), the CPU seconds of this process and of PostgreSQL, and
in the same run the reference `one_by_one_us_per_node_report` (the same reports applied a
node at a time, as an idle web process applies them).

    .venv/bin/python benchmarks/report_apply.py [--nodes 5000] [--replicas 10000] [--batch 60]
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from cputime import cpu_seconds


def log(message: str) -> None:
    print(f"[report_apply] {message}", file=sys.stderr, flush=True)


def main() -> None:
    from placement_db import fleet_arguments

    parser = fleet_arguments(__doc__)
    parser.add_argument("--batch", type=int, default=60, help="node reports applied together")
    args = parser.parse_args()

    from tests.harness.plugin import start_services

    services = start_services()
    try:
        result = run(args, services.postgres.proc.pid)
    finally:
        services.stop()
    print(json.dumps(result))


def reports_for(nodes: dict[int, list[tuple[str, str]]], generations: dict[int, int], phase: str) -> dict:
    """Each node's partial report: its replicas (namespace, name) all in `phase`."""
    reports = {}
    for node_id, replicas in nodes.items():
        entries = []
        for namespace, name in replicas:
            running = phase == "Running"
            entries.append(
                {
                    "name": name,
                    "namespace": namespace,
                    "container_id": f"c-{name}" if running else "",
                    "phase": phase,
                    "exit_code": None,
                    "message": "" if running else "creating container",
                    "restart_count": 0,
                    "started_at": "2026-11-23T04:00:00Z" if running else None,
                    "finished_at": None,
                    "ready": running,
                    "ready_since": "2026-11-23T04:00:00Z" if running else None,
                    "health": None,
                    "last_exit_code": None,
                }
            )
        reports[node_id] = {
            "type": "status",
            "generation": generations[node_id],
            "full": False,
            "names": [list(pair) for pair in replicas],
            "replicas": entries,
        }
    return reports


def run(args, postgres_pid: int) -> dict:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from placement_db import create_deployments, create_nodes, place_all
    from scheduler_throughput import deployment_bodies

    from nodes.models import Node
    from orchestrator.controllers.node_reports import apply_node_report, apply_node_reports
    from orchestrator.models import Replica

    log(f"creating {args.nodes} nodes and placing {args.replicas} replicas")
    create_nodes(args.nodes, args.seed)
    place_all(create_deployments(deployment_bodies(args.replicas, args.seed, set())))

    by_node: dict[int, list[tuple[str, str]]] = {}
    for node_id, namespace, name in Replica.objects.filter(node__isnull=False).values_list(
        "node_id", "namespace__name", "name"
    ):
        by_node.setdefault(node_id, []).append((namespace, name))
    generations = dict(Node.objects.filter(pk__in=list(by_node)).values_list("pk", "generation"))
    node_ids = sorted(by_node)
    half = len(node_ids) // 2
    measured = {node_id: by_node[node_id] for node_id in node_ids[:half]}
    reference = {node_id: by_node[node_id] for node_id in node_ids[half:]}

    def play(nodes, batch: int) -> tuple[float, float, float, int]:
        reports = 0
        wall = own = pg = 0.0
        for phase in ("Pending", "Running"):
            playing = reports_for(nodes, generations, phase)
            ids = list(playing)
            own_before, pg_before = time.process_time(), cpu_seconds(postgres_pid)
            started = time.perf_counter()
            for start in range(0, len(ids), batch):
                chunk = {node_id: playing[node_id] for node_id in ids[start : start + batch]}
                if batch == 1:
                    apply_node_report(*next(iter(chunk.items())))
                else:
                    apply_node_reports(chunk)
            wall += time.perf_counter() - started
            own += time.process_time() - own_before
            pg += cpu_seconds(postgres_pid) - pg_before
            reports += len(ids)
        return wall, own, pg, reports

    log(f"applying {2 * len(measured)} node reports in batches of {args.batch}")
    wall, own, pg, count = play(measured, args.batch)
    running = Replica.objects.filter(node_id__in=list(measured), phase="Running").count()
    expected = sum(len(replicas) for replicas in measured.values())
    if running != expected:
        raise SystemExit(f"report_apply: {running} replicas Running after the reports, {expected} expected")
    log(f"reference: {2 * len(reference)} node reports one at a time")
    ref_wall, ref_own, ref_pg, ref_count = play(reference, 1)
    return {
        "nodes": args.nodes,
        "replicas": args.replicas,
        "batch": args.batch,
        "node_reports": count,
        "us_per_node_report": round(1e6 * wall / count, 1),
        "cpu_us_per_node_report": {
            "python": round(1e6 * own / count, 1),
            "postgres": round(1e6 * pg / count, 1),
        },
        "one_by_one_us_per_node_report": round(1e6 * ref_wall / ref_count, 1),
        "one_by_one_cpu_us_per_node_report": {
            "python": round(1e6 * ref_own / ref_count, 1),
            "postgres": round(1e6 * ref_pg / ref_count, 1),
        },
    }


if __name__ == "__main__":
    main()
