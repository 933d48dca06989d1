"""Failover: cut a host off the network and time until its replicas run on another host.

Two real hosts; each run creates a 2-replica deployment (one replica per host), cuts h1's
link, and measures until the engine of h2 runs both replicas. Then it restores the link,
waits until h1's agent has stopped the replaced (fenced) replica, and deletes the
deployment. The control plane runs with the production timings (node grace 10 s,
heartbeat 2 s) and the default 5 s node-loss toleration, unless flags say otherwise.
Also reported: when the API showed h1 NotReady, and a replica's own start time on h2 (the
floor that no failover can beat) measured in the same run. Needs root.

    sudo .venv/bin/python benchmarks/failover.py [--runs 5] [--grace 10] [--toleration 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid

from realhosts import PRODUCTION_TIMINGS, percentile, real_cluster

from tests.harness.waiting import wait_for

IMAGE = "berth-test/busybox:1"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
DEPLOYMENTS = "/api/v1/namespaces/default/deployments/"
POLL = 0.05


def log(message: str) -> None:
    print(f"[failover] {message}", file=sys.stderr, flush=True)


def running(host, name) -> list:
    return [
        c
        for c in host.berth_containers(all=False)
        if c.labels.get("berth.deployment") == name and c.status == "running"
    ]


def one_run(plane, h1, h2, toleration: int) -> dict[str, float]:
    api = plane.api
    name = f"failover-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name, "image": IMAGE, "command": COMMAND, "replicas": 2, "max_per_node": 2,
        "node_loss_toleration_seconds": toleration,
    }  # fmt: skip
    api.post(DEPLOYMENTS, json=body).raise_for_status()
    wait_for(lambda: len(running(h1, name)) == 1 and len(running(h2, name)) == 1, 60, "one replica per host")
    h1.cut()
    cut = time.monotonic()
    not_ready = None
    try:
        while len(running(h2, name)) < 2:
            if not_ready is None and api.get(f"/api/v1/nodes/{h1.name}/").json()["status"] == "NotReady":
                not_ready = time.monotonic() - cut
            if time.monotonic() - cut > 120:
                raise RuntimeError(
                    f"no failover within 120 s; replicas {api.get(DEPLOYMENTS + name + '/replicas/').text}"
                )
            time.sleep(POLL)
        failover = time.monotonic() - cut
    finally:
        h1.restore()
    wait_for(lambda: not running(h1, name), 90, "the replaced replica stopped on h1 (fencing)")
    wait_for(lambda: api.get(f"/api/v1/nodes/{h1.name}/").json()["status"] == "Ready", 60, "h1 Ready again")
    total = len(running(h1, name)) + len(running(h2, name))
    if total != 2:
        raise RuntimeError(f"{total} containers run after the host came back, expected 2")
    api.delete(f"{DEPLOYMENTS}{name}/").raise_for_status()
    wait_for(lambda: not running(h1, name) and not running(h2, name), 60, "deployment removed")
    return {"failover": failover, "not_ready": not_ready or failover}


def start_time(plane, host) -> float:
    """One replica from POST to running in the engine, on `host` alone (the floor)."""
    name = f"floor-{uuid.uuid4().hex[:6]}"
    body = {
        "name": name,
        "image": IMAGE,
        "command": COMMAND,
        "replicas": 1,
        "node_selector": {"bench": host.name},
    }
    plane.api.patch(f"/api/v1/nodes/{host.name}/", json={"labels": {"bench": host.name}}).raise_for_status()
    started = time.monotonic()
    plane.api.post(DEPLOYMENTS, json=body).raise_for_status()
    while not running(host, name):
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    plane.api.delete(f"{DEPLOYMENTS}{name}/").raise_for_status()
    wait_for(lambda: not running(host, name), 60, "floor deployment removed")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--grace", type=float, default=float(PRODUCTION_TIMINGS["BERTH_NODE_GRACE_SECONDS"]))
    parser.add_argument(
        "--heartbeat", type=float, default=float(PRODUCTION_TIMINGS["BERTH_AGENT_HEARTBEAT_SECONDS"])
    )
    parser.add_argument("--toleration", type=int, default=5)
    args = parser.parse_args()
    env = {"BERTH_NODE_GRACE_SECONDS": str(args.grace), "BERTH_AGENT_HEARTBEAT_SECONDS": str(args.heartbeat)}
    with real_cluster(["h1", "h2"], env=env, log=log) as (plane, (h1, h2)):
        floors, runs = [], []
        for i in range(args.runs):
            floors.append(start_time(plane, h2))
            runs.append(one_run(plane, h1, h2, args.toleration))
            log(
                f"run {i + 1}: replicas on h2 {runs[-1]['failover']:.2f} s after the cut "
                f"(h1 NotReady in the API at {runs[-1]['not_ready']:.2f} s); "
                f"a replica starts in {floors[-1]:.2f} s"
            )
        failovers = [r["failover"] for r in runs]
        result = {
            "runs": args.runs,
            "failover_p50_s": round(statistics.median(failovers), 2),
            "failover_max_s": round(max(failovers), 2),
            "failover_p99_s": round(percentile(failovers, 0.99), 2),
            "not_ready_p50_s": round(statistics.median(r["not_ready"] for r in runs), 2),
            "replica_start_p50_s": round(statistics.median(floors), 2),
            "node_grace_s": args.grace,
            "heartbeat_s": args.heartbeat,
            "node_loss_toleration_s": args.toleration,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
