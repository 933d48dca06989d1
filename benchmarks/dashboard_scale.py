"""The dashboard at thousands of nodes: what a page and its live updates cost the web process.

Sets up a private PostgreSQL and Redis, N Ready nodes shaped like the hollow fleet and the
scheduler_throughput mix of deployments placed on them (benchmarks/placement_db.py), then
times, as a logged-in user:

- `overview_ms`, `nodes_page_ms`, `node_page_ms`: rendering the overview, the nodes list
  and one node's page (Django's test client: the view, the template, the middleware);
- `cluster_snapshot_ms` and `cluster_snapshot_kib`: one live update of the overview (what
  the /ws/cluster/ consumer builds and sends after every change of state: each deployment's
  change pokes it), `node_snapshot_ms`/`_kib` for a node page's socket, and
  `deployment_page_ms` and `deployment_snapshot_ms` for the mix's biggest deployment
  (`biggest_deployment_replicas`).

Each is the median of `--repeat` runs. In the same run, the reference
`machine_reference_per_s` (benchmarks/scheduler_throughput.py): this machine's speed varies
by phases.

    .venv/bin/python benchmarks/dashboard_scale.py [--nodes 5000] [--replicas 10000] [--repeat 5]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("BERTH_DEBUG", "false")  # as in production: no query log
os.environ.setdefault("BERTH_SECRET_KEY", "dashboard-scale-benchmark-" + "x" * 40)
os.environ.setdefault("BERTH_SSL_REDIRECT", "false")
os.environ.setdefault("BERTH_ALLOWED_HOSTS", "*")


def log(message: str) -> None:
    print(f"[dashboard_scale] {message}", file=sys.stderr, flush=True)


def main() -> None:
    from placement_db import fleet_arguments, print_run

    parser = fleet_arguments(__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    print_run(run, parser.parse_args())


def timed(fn, repeat: int) -> tuple[float, object]:
    """The median wall time of `fn()` in milliseconds, and its last result."""
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(1000 * (time.perf_counter() - started))
    return round(statistics.median(times), 1), result


def run(args) -> dict:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from django.contrib.auth import get_user_model
    from django.db.models import Count
    from django.test import Client
    from placement_db import create_deployments, create_nodes, place_all
    from scheduler_throughput import deployment_bodies, machine_reference

    from nodes.models import Node
    from orchestrator.models import Deployment
    from web.consumers.browser import ClusterConsumer, DeploymentConsumer

    log(f"creating {args.nodes} nodes and deployments of {args.replicas} replicas")
    create_nodes(args.nodes, args.seed)
    place_all(create_deployments(deployment_bodies(args.replicas, args.seed, set())))
    user = get_user_model().objects.create_superuser("admin", password=None)
    client = Client()
    client.force_login(user)
    node = Node.objects.order_by("name")[args.nodes // 2]
    biggest = (
        Deployment.objects.annotate(n=Count("replica_set")).order_by("-n").select_related("namespace")[0]
    )

    def page(url):
        def get():
            response = client.get(url)
            if response.status_code != 200:
                raise SystemExit(f"dashboard_scale: GET {url} answered {response.status_code}")
            return response.content

        return get

    def snapshot(query: str):
        consumer = ClusterConsumer()
        consumer.scope = {"user": user, "query_string": query.encode()}
        consumer.authorise(user)
        return lambda: json.dumps(consumer.snapshot())

    def deployment_snapshot():
        consumer = DeploymentConsumer()
        kwargs = {"namespace": biggest.namespace.name, "name": biggest.name}
        consumer.scope = {"user": user, "url_route": {"kwargs": kwargs}}
        consumer.authorise(user)
        return lambda: json.dumps(consumer.snapshot())

    result: dict = {"nodes": args.nodes, "replicas": args.replicas}
    result["machine_reference_per_s"] = machine_reference()
    log("timing")
    deployment_url = f"/namespaces/{biggest.namespace.name}/deployments/{biggest.name}/"
    result["biggest_deployment_replicas"] = biggest.n
    pages = (
        ("overview", "/"),
        ("nodes_page", "/nodes/"),
        ("node_page", f"/nodes/{node.name}/"),
        ("deployment_page", deployment_url),
    )
    for name, url in pages:
        result[f"{name}_ms"], body = timed(page(url), args.repeat)
        result[f"{name}_kib"] = round(len(body) / 1024, 1)
    updates = (
        ("cluster_snapshot", snapshot("view=overview")),
        ("node_snapshot", snapshot(f"node={node.name}")),
        ("deployment_snapshot", deployment_snapshot()),
    )
    for name, build in updates:
        result[f"{name}_ms"], sent = timed(build, args.repeat)
        result[f"{name}_kib"] = round(len(sent.encode()) / 1024, 1)
    return result


if __name__ == "__main__":
    main()
