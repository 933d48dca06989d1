"""Rollout speed: roll 10 replicas that have an HTTP readiness probe to a new revision with
max_surge 25%, against one replica going from create to ready, in the same run.

Two real hosts. `single_replica_ready_s` is a 1-replica deployment from POST until the
API reports it available (the probe passed); `rollout_s` is a 10-replica deployment's
PATCH until all 10 replicas of the new revision are available and the old ones gone.
`ratio` = rollout_s / single_replica_ready_s (the target is at most 3). Median of
--runs runs each, interleaved. Needs root.

Beside it, the engines alone in the same run: `engine_floor_ratio` is the time the two
engines take to start the rollout's 10 containers at once through their API, over the time
one takes, with no orchestrator at all (what no rollout on this machine can beat), and
`rollout_cpu_s` is where the CPU of the rollouts went, by process.

    sudo .venv/bin/python benchmarks/rollout.py [--runs 3] [--replicas 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import docker
from cputime import CpuMeter, processes_matching
from realhosts import PRODUCTION_SETTINGS, PRODUCTION_TIMINGS, real_cluster

from tests.harness.waiting import wait_for

IMAGE = "berth-test/busybox:1"
WEB = ["sh", "-c", 'mkdir -p /www && echo "$VERSION" > /www/index.html && httpd -f -p 8080 -h /www']
PROBE = {"http_get": {"port": 8080, "path": "/index.html"}, "period_seconds": 1, "failure_threshold": 1}
DEPLOYMENTS = "/api/v1/namespaces/default/deployments/"
POLL = 0.02


def log(message: str) -> None:
    print(f"[rollout] {message}", file=sys.stderr, flush=True)


def status(api, name) -> dict:
    return api.get(f"{DEPLOYMENTS}{name}/").json()


def spec(name: str, replicas: int) -> dict:
    return {
        "name": name, "image": IMAGE, "command": WEB, "env": {"VERSION": "1"}, "replicas": replicas,
        "readiness_probe": PROBE, "termination_grace_seconds": 2,
        "update_strategy": {"type": "RollingUpdate", "max_surge": "25%", "max_unavailable": "25%"},
    }  # fmt: skip


TRACE = False


def wait_available(api, name, replicas, revision, deadline=180) -> None:
    started = time.monotonic()
    last = None
    while True:
        body = status(api, name)
        s = body["status"]
        seen = (s["observed_generation"], s["replicas"], s["updated_replicas"], s["available_replicas"])
        if TRACE and seen != last:
            elapsed = time.monotonic() - started
            log(f"  {elapsed:6.2f} s: replicas {seen[1]}, updated {seen[2]}, available {seen[3]}")
            last = seen
        if (
            s["observed_generation"] >= body["generation"]  # the controller has seen the change
            and s["revision"] == revision
            and s["updated_replicas"] == replicas == s["available_replicas"] == s["replicas"]
        ):
            return
        if time.monotonic() - started > deadline:
            raise RuntimeError(f"{name} not rolled out after {deadline} s: {s}")
        time.sleep(POLL)


def single(api) -> float:
    name = f"one-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    api.post(DEPLOYMENTS, json=spec(name, 1)).raise_for_status()
    wait_available(api, name, 1, 1)
    elapsed = time.monotonic() - started
    api.delete(f"{DEPLOYMENTS}{name}/").raise_for_status()
    return elapsed


def rollout(api, hosts, replicas: int, meter: CpuMeter) -> float:
    name = f"roll-{uuid.uuid4().hex[:6]}"
    api.post(DEPLOYMENTS, json=spec(name, replicas)).raise_for_status()
    wait_available(api, name, replicas, 1)
    meter.start()
    started = time.monotonic()
    api.patch(f"{DEPLOYMENTS}{name}/", json={"env": {"VERSION": "2"}}).raise_for_status()
    wait_available(api, name, replicas, 2)
    elapsed = time.monotonic() - started
    meter.stop()
    api.delete(f"{DEPLOYMENTS}{name}/").raise_for_status()
    wait_for(
        lambda: (
            not [c for h in hosts for c in h.berth_containers() if c.labels.get("berth.deployment") == name]
        ),
        60,
        f"{name} removed",
    )
    return elapsed


def engine_start(host, count: int) -> float:
    """`count` containers started at once with raw `docker run -d` on one engine, until all
    run: what a wave of a rollout costs the engine itself, with no Berth in the way."""
    names = [f"raw-{uuid.uuid4().hex[:8]}" for _ in range(count)]
    docker = ["docker", "-H", host.docker_url]
    started = time.monotonic()
    procs = [
        subprocess.Popen([*docker, "run", "-d", "--name", n, IMAGE, *WEB], stdout=subprocess.DEVNULL)
        for n in names
    ]
    for proc in procs:
        proc.wait()
    elapsed = time.monotonic() - started
    subprocess.run([*docker, "rm", "-f", *names], check=True, capture_output=True)
    return elapsed


def cpu_meter(plane, services, hosts) -> CpuMeter:
    """Where the CPU of the rollouts goes: each process of the control plane, the agents, and
    the engines (dockerd, containerd, the shims with the containers and the hooks they ran)."""

    def engines():
        for host in hosts:
            yield from (p.pid for p in (host.engine.dockerd, host.engine.containerd) if p)
            yield from processes_matching("containerd-shim", str(host.engine.containerd_socket))

    return CpuMeter(
        {
            "web": lambda: [plane.procs["web"].pid],
            "worker": lambda: [plane.procs["worker"].pid],
            "scheduler": lambda: [plane.procs["scheduler"].pid],
            "beat": lambda: [plane.procs["beat"].pid],
            "postgres": lambda: [services.postgres.proc.pid],
            "redis": lambda: [services.redis.proc.pid],
            "agents": lambda: [h.agent.pid for h in hosts if h.agent],
            "engines": engines,
            "benchmark": lambda: [os.getpid()],  # last: what the others did not claim
        }
    )


def engine_starts(hosts, per_host: int) -> float:
    """`per_host` containers created and started at once on every host through the engines'
    API (no CLI, no Berth), until every start has returned (the container runs): the
    engines' own cost of that many starts, the floor under any orchestrator's."""
    names = {host: [f"raw-{uuid.uuid4().hex[:8]}" for _ in range(per_host)] for host in hosts}

    def start(host, name) -> None:
        api = host.docker.api
        api.start(api.create_container(IMAGE, WEB, name=name, environment=["VERSION=raw"])["Id"])

    jobs = [(host, name) for host, batch in names.items() for name in batch]
    try:
        with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
            started = time.monotonic()
            list(pool.map(lambda job: start(*job), jobs))
            elapsed = time.monotonic() - started
    finally:
        for host, name in jobs:
            with contextlib.suppress(docker.errors.NotFound):
                host.docker.api.remove_container(name, force=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=10)
    parser.add_argument("--trace", action="store_true", help="log each change of the rollout's status")
    args = parser.parse_args()
    global TRACE
    TRACE = args.trace
    env = {**PRODUCTION_TIMINGS, **PRODUCTION_SETTINGS}
    with real_cluster(["h1", "h2"], env=env, log=log) as (plane, hosts):
        meter = cpu_meter(plane, plane.services, hosts)
        singles, rollouts = [], []
        single(plane.api)  # warm-up: image cache, connections
        for i in range(args.runs):
            singles.append(single(plane.api))
            rollouts.append(rollout(plane.api, hosts, args.replicas, meter))
            log(
                f"run {i + 1}: one replica ready in {singles[-1]:.2f} s; "
                f"rollout of {args.replicas} in {rollouts[-1]:.2f} s"
            )
        single_s, rollout_s = statistics.median(singles), statistics.median(rollouts)
        # The engines alone: one start, and as many starts as the rollout makes, all at once
        # over both hosts (what a perfectly parallel rollout would ask of them).
        engine_one = statistics.median(engine_starts(hosts[:1], 1) for _ in range(3))
        per_host = -(-args.replicas // len(hosts))
        engine_all = statistics.median(engine_starts(hosts, per_host) for _ in range(3))
        wave = args.replicas // 2  # 25 % surge + 25 % unavailable: about half the replicas per wave
        one = statistics.median(engine_start(hosts[0], 1) for _ in range(3))
        many = statistics.median(engine_start(hosts[0], wave) for _ in range(3))
        print(
            json.dumps(
                {
                    "runs": args.runs,
                    "replicas": args.replicas,
                    "max_surge": "25%",
                    "max_unavailable": "25%",
                    "rollout_s": round(rollout_s, 2),
                    "single_replica_ready_s": round(single_s, 2),
                    "ratio": round(rollout_s / single_s, 2),
                    "rollout_max_s": round(max(rollouts), 2),
                    # The engine's own cost of a wave, in the same run (raw docker run, one host).
                    "docker_run_1_s": round(one, 2),
                    f"docker_run_{wave}_at_once_s": round(many, 2),
                    "engine_start_1_s": round(engine_one, 2),
                    f"engine_start_{per_host * len(hosts)}_at_once_s": round(engine_all, 2),
                    # The ratio the engines alone allow: the rollout's starts against one start.
                    "engine_floor_ratio": round(engine_all / engine_one, 2),
                    # CPU seconds per rollout (mean), by process, and the machine's busy share.
                    "rollout_cpu_s": {k: round(v / args.runs, 2) for k, v in meter.result().items()},
                    "rollout_busy_share": round(meter.busy / ((os.cpu_count() or 1) * sum(rollouts) or 1), 2),
                }
            )
        )


if __name__ == "__main__":
    main()
