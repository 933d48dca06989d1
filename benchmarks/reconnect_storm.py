"""Reconnect storm: restart the web server under N connected hollow nodes running replicas.

What an operator's upgrade of the web processes does to a large fleet: every agent's socket
is closed with 1012 (service restart) and all of them reconnect at once (within the agents'
1 s fast-reconnect ceiling, agent/reconnect.py), each with a handshake, its credential
checked, a hello and a full desired set. Measured, from the SIGTERM:

- reconnected_s: until every node has a new session (its agent said hello again);
- nodes_not_ready: nodes the node monitor turned NotReady meanwhile or within a grace after
  the last one reconnected (each puts its replicas in Unknown, and past their toleration
  they are replaced elsewhere: a healthy fleet must never see one);
- replicas_replaced (NodeLost events) and replicas_not_running at the end;
- web_cpu_ms_per_reconnect: the new web processes' CPU over the storm, per node;
- machine_reference_per_s: the same reference as scheduler_throughput's, for comparing runs.

Starts what it needs itself (PostgreSQL, Redis, the control plane, the hollow fleet), as
scheduler_throughput.py does. Progress on stderr; one JSON object on stdout.

    .venv/bin/python benchmarks/reconnect_storm.py [--nodes 2000] [--replicas 4000] [--restarts 1]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from cputime import cpu_seconds
from scheduler_throughput import (
    COUNTS,
    DATABASE,
    NODE_EVENTS,
    NOT_READY,
    REPO,
    BenchControlPlane,
    Profiler,
    _interrupt,
    deployment_bodies,
    hollow_progress,
    keep_logs,
    machine_reference,
    start_hollow,
    wait_nodes_ready,
)

from devtools.services import stop_process
from tests.harness.plugin import start_services

SESSIONS = "SELECT id, session FROM nodes_node"


def log(message: str) -> None:
    print(f"[reconnect_storm] {message}", file=sys.stderr, flush=True)


def node_events(db) -> dict[str, int]:
    return dict(db.execute(NODE_EVENTS).fetchall())


def lost_events(db) -> int:
    row = db.execute("SELECT coalesce(sum(count), 0)::int FROM orchestrator_event WHERE reason = 'NodeLost'")
    return row.fetchone()[0]


def create_and_wait_running(plane, db, args) -> float:
    bodies = deployment_bodies(args.replicas, args.seed, set())
    url = "/api/v1/namespaces/default/deployments/"
    client = plane.client(plane.api_token)

    def post(body):
        response = client.post(url, json=body)
        if response.status_code != 201:
            raise RuntimeError(f"POST {body['name']}: HTTP {response.status_code} {response.text[:300]}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(post, bodies))
    while True:
        _, running = db.execute(COUNTS).fetchone()
        if running >= args.replicas:
            return time.monotonic() - started
        if time.monotonic() - started > args.timeout:
            raise RuntimeError(f"only {running}/{args.replicas} replicas Running after {args.timeout:g} s")
        plane.check_alive()
        time.sleep(0.5)


def one_restart(plane, db, args, index: int) -> dict[str, Any]:
    before = dict(db.execute(SESSIONS).fetchall())
    events_before, lost_before = node_events(db), lost_events(db)
    result: dict[str, Any] = {"machine_reference_per_s": machine_reference()}
    others = {name: cpu_seconds(plane.procs[name].pid) for name in ("worker", "scheduler", "beat")}
    log("restarting the web server (SIGTERM: agents are closed with 1012)")
    signalled = time.monotonic()
    plane.kill("web", signal.SIGTERM)
    result["web_stop_s"] = round(time.monotonic() - signalled, 2)
    plane._spawn("web", plane._argv["web"])
    web_pid = plane.procs["web"].pid
    profiler = None
    if args.profile:
        profiler = Profiler(Path(args.profile_dir) / f"restart-{index}")
        profiler.start({"web": web_pid})
    reconnected_s = None
    last_log = 0.0
    settle_until = None
    not_ready_peak = 0
    while True:
        now = time.monotonic()
        rows = db.execute(SESSIONS).fetchall()
        renewed = sum(1 for node_id, session in rows if session not in (None, before.get(node_id)))
        not_ready = db.execute("SELECT count(*) FROM nodes_node WHERE status = 'NotReady'").fetchone()[0]
        not_ready_peak = max(not_ready_peak, not_ready)
        if reconnected_s is None and renewed >= args.nodes:
            reconnected_s = now - signalled
            web_cpu = cpu_seconds(web_pid)
            log(f"all {args.nodes} reconnected in {reconnected_s:.1f} s; watching {args.settle:g} s more")
            settle_until = now + args.settle
        if settle_until is not None and now >= settle_until:
            break
        if now - signalled > args.timeout:
            log(f"giving up: {renewed}/{args.nodes} reconnected after {args.timeout:g} s")
            web_cpu = cpu_seconds(web_pid)
            break
        if now - last_log >= 5:
            log(f"{renewed}/{args.nodes} reconnected, {not_ready} NotReady ({now - signalled:.0f} s)")
            last_log = now
        plane.check_alive()
        time.sleep(0.25)
    if profiler is not None:
        result["profile"] = profiler.stop()
    events_after = node_events(db)
    _, running = db.execute(COUNTS).fetchone()
    result.update(
        reconnected_s=round(reconnected_s, 2) if reconnected_s is not None else None,
        reconnected=renewed,
        nodes_not_ready=events_after.get("NodeNotReady", 0) - events_before.get("NodeNotReady", 0),
        nodes_not_ready_peak=not_ready_peak,
        nodes_not_ready_end=dict(db.execute(NOT_READY).fetchall()),
        replicas_replaced=lost_events(db) - lost_before,
        replicas_not_running=args.replicas - running,
        web_cpu_s=round(web_cpu, 1),
        web_cpu_ms_per_reconnect=round(1000 * web_cpu / max(renewed, 1), 2),
        other_cpu_s={name: round(cpu_seconds(plane.procs[name].pid) - v, 1) for name, v in others.items()},
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=4000)
    parser.add_argument("--restarts", type=int, default=1, help="web restarts, one after another")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--web-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--connect-rate", type=float, default=200.0, help="hollow nodes started per second")
    parser.add_argument("--hollow-processes", type=int, default=2)
    parser.add_argument("--hollow-nice", type=int, default=-10)
    parser.add_argument("--heartbeat", type=float, default=2.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=15.0, help="watched after the last reconnect (s)")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", action="store_true", help="sample the new web processes with py-spy")
    parser.add_argument("--profile-dir", default=str(REPO / "test-artifacts" / "reconnect-profile"))
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the control plane's and fleet's logs here")
    args = parser.parse_args()

    signal.signal(signal.SIGTERM, _interrupt)
    result: dict[str, Any] = {"nodes": args.nodes, "replicas": args.replicas}
    services = start_services(())
    os.environ.update(BERTH_DEBUG="false", BERTH_SSL_REDIRECT="false", BERTH_ALLOWED_HOSTS="*")
    plane = BenchControlPlane(
        services, schedulers=1, heartbeat=args.heartbeat, grace=args.grace, web_workers=args.web_workers
    )
    hollow = None
    try:
        plane.start()
        db = psycopg.connect(services.database_url(DATABASE), autocommit=True)
        log(f"starting {args.nodes} hollow nodes")
        hollow = start_hollow(plane, args, plane.new_join_token(), services.root / "hollow-state")
        ready_s, ready = wait_nodes_ready(db, hollow, plane, args.nodes, args.timeout)
        result["nodes_ready_s"] = round(ready_s, 1) if ready_s is not None else None
        log(f"{ready}/{args.nodes} Ready; creating {args.replicas} replicas")
        result["replicas_running_s"] = round(create_and_wait_running(plane, db, args), 1)
        result["restarts"] = [one_restart(plane, db, args, i) for i in range(args.restarts)]
        result["node_events"] = node_events(db)
        result["hollow_end"] = hollow_progress(plane, args.hollow_processes)
    except Exception as exc:
        result["error"] = f"{type(exc).__name__}: {exc}"[:3000]  # still one JSON object
        exit_code = 1
    else:
        exit_code = 0
    finally:
        log("tearing down")
        if hollow is not None:
            stop_process(hollow, timeout=20)
        plane.stop()
        if args.keep_logs:
            keep_logs(plane, Path(args.keep_logs))
        services.stop()
    print(json.dumps(result))
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
