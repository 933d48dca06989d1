"""Startup latency: from the POST of a 1-replica deployment to the replica reported Running,
against raw `docker run -d` + wait until running on the same engine, in the same run.

Starts what it needs itself (private PostgreSQL and Redis, the control plane: uvicorn,
Celery worker and beat; one host: a network namespace with its own Docker engine and
agent), as the e2e tests do. Needs root. Progress on stderr; one JSON object on stdout.

    sudo .venv/bin/python benchmarks/startup_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid

import psycopg
from realhosts import percentile, real_cluster

from tests.harness.controlplane import DATABASE, ControlPlane
from tests.harness.waiting import wait_for

IMAGE = "berth-test/busybox:1"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
POLL = 0.002  # seconds between looks; small against what is measured


def log(message: str) -> None:
    print(f"[startup_latency] {message}", file=sys.stderr, flush=True)


def berth_once(plane: ControlPlane, db: psycopg.Connection, host) -> float:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "image": IMAGE, "replicas": 1, "command": COMMAND}
    started = time.perf_counter()
    response = plane.api.post("/api/v1/namespaces/default/deployments/", json=body)
    response.raise_for_status()
    query = (
        "SELECT r.phase FROM orchestrator_replica r JOIN orchestrator_deployment d ON d.id = r.deployment_id "
        "WHERE d.name = %s AND d.deleted_at IS NULL"
    )
    deadline = started + 30
    while True:
        row = db.execute(query, [name]).fetchone()
        if row and row[0] == "Running":
            elapsed = time.perf_counter() - started
            break
        if time.perf_counter() > deadline:
            raise RuntimeError(
                f"{name} not Running after 30 s (last phase {row}); agent: {host.agent_output(20)}"
            )
        time.sleep(POLL)
    plane.api.delete(f"/api/v1/namespaces/default/deployments/{name}/").raise_for_status()
    wait_for(
        lambda: not [c for c in host.berth_containers() if c.labels.get("berth.deployment") == name],
        30,
        f"{name}'s container removed",
    )
    return elapsed


def docker_once(host) -> float:
    name = f"raw-{uuid.uuid4().hex[:8]}"
    docker = ["docker", "-H", host.docker_url]
    started = time.perf_counter()
    subprocess.run([*docker, "run", "-d", "--name", name, IMAGE, *COMMAND], check=True, capture_output=True)
    while True:
        state = subprocess.run(
            [*docker, "inspect", "-f", "{{.State.Running}}", name], check=True, capture_output=True, text=True
        ).stdout.strip()
        if state == "true":
            elapsed = time.perf_counter() - started
            break
        time.sleep(POLL)
    subprocess.run([*docker, "rm", "-f", name], check=True, capture_output=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    with real_cluster(["h1"], log=log) as (plane, (host,)):
        db = psycopg.connect(plane.services.database_url(DATABASE), autocommit=True)

        berth, docker = [], []
        for i in range(args.warmup + args.runs):
            # Interleaved, so both see the same machine at the same time.
            b, d = berth_once(plane, db, host), docker_once(host)
            if i >= args.warmup:
                berth.append(b)
                docker.append(d)
            log(
                f"run {i + 1 - args.warmup:>3}{' (warm-up)' if i < args.warmup else ''}: "
                f"berth {b * 1000:.0f} ms, docker run {d * 1000:.0f} ms"
            )
        ms = lambda s: round(s * 1000, 1)  # noqa: E731
        result = {
            "runs": args.runs,
            "berth_p50_ms": ms(statistics.median(berth)),
            "berth_p99_ms": ms(percentile(berth, 0.99)),
            "docker_p50_ms": ms(statistics.median(docker)),
            "docker_p99_ms": ms(percentile(docker, 0.99)),
            "ratio_p50": round(statistics.median(berth) / statistics.median(docker), 2),
            "berth_min_ms": ms(min(berth)),
            "docker_min_ms": ms(min(docker)),
            "engine": host.docker.version().get("Version"),
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
