"""Scheduler throughput: how fast the control plane places and starts replicas on many nodes.

Starts what it needs itself: a private PostgreSQL and Redis, the control plane (uvicorn,
Celery worker, scheduler(s), beat) through the test harness, and N hollow nodes in a subprocess
(`python -m agent.hollow`: real agent sessions over an in-memory engine, split over
`--hollow-processes` processes). Once the N nodes
are Ready (some tainted through the API), it creates deployments through REST totalling R
replicas, a mix of the placement rules in docs/scheduling.md, and measures in PostgreSQL:

- placements_per_s: R / (time from the first POST until every replica has a node_id);
- all_running_s: time from the first POST until every replica's phase is Running;
- placed_after_posts_s: how long after the last POST's answer every replica was placed:
  near 0, the API (the POSTs, one after another by default) set the pace; more, the
  scheduler did;
- machine_reference_per_s (and _after_per_s): the reference, a fixed pure-Python workload
  timed just before the POSTs (and after the run), for comparing runs made while the
  machine was in faster or slower phases; fleet_idle_cpu_per_s: the web process's and the
  fleet's CPU per second over 2 s just before each round, the heartbeats alone (after a
  round's deletion, what is left of it too): another gauge of the phase;
- cpu_s and cpu_placed_s: each process's CPU time in the round, and until every replica
  was placed (with --pause-fleet: the placing alone); steal_placed_s: the time the
  hypervisor gave other guests meanwhile (a virtual machine's slow phases, if it says);
- api_connections_per_web_process and agents_per_web_process: how the API clients' and
  the agents' connections spread over the web processes.

`--rounds K` measures K times on one fleet (each round deletes the last round's deployments
and waits until their replicas are gone): `rounds` holds each round's figures (with
`cleared`, how long its deletion took: the DELETEs, and until its replicas were gone),
`placements_per_s_median` and `_min` sum them up, and the top-level figures are the first
round's. Onboarding thousands of nodes takes minutes; a round takes seconds.

Progress on stderr; one JSON object on stdout. Stops by itself (bounded waits) and tears
everything down.

    .venv/bin/python benchmarks/scheduler_throughput.py [--nodes 5000] [--replicas 10000]
        [--schedulers 1] [--heartbeat 2] [--grace 10] [--rounds 1] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cputime import connections_per_server, cpu_seconds, proc_status, steal_seconds, tree_pids

from agent.hollow import BASE_IMAGE, IMAGE_POOL
from devtools import commands
from devtools.services import die_with_parent, stop_process, tail
from tests.harness.controlplane import DATABASE, ControlPlane
from tests.harness.hosts import REPO, child_env
from tests.harness.plugin import start_services

NAMESPACE = "default"
PREFIX = "bench-"
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]
TAINT_GPU = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
TAINT_SPOT = {"key": "spot", "value": "true", "effect": "PreferNoSchedule"}
PLACEMENT_FIELDS = ("strategy", "node_selector", "affinity", "tolerations", "topology_spread", "max_per_node")

# The deployment mix: name -> spec fields (docs/scheduling.md). Cycled over the deployments.
KINDS: list[tuple[str, dict[str, Any]]] = [
    ("plain", {"resources": {"cpu": "100m", "memory": "64Mi"}}),
    (
        "web",
        {
            "resources": {"cpu": "250m", "memory": "256Mi"},
            "affinity": {"required": [{"key": "tier", "operator": "In", "values": ["web", "general"]}]},
            "topology_spread": [
                {"topology_key": "zone", "max_skew": 1, "when_unsatisfiable": "DoNotSchedule"}
            ],
        },
    ),
    (
        "batch",
        {
            "resources": {"cpu": "500m", "memory": "512Mi"},
            "strategy": "binpack",
            "node_selector": {"tier": "batch"},
        },
    ),
    (
        "cache",
        {"resources": {"cpu": "100m", "memory": "1Gi"}, "node_selector": {"disk": "ssd"}, "max_per_node": 2},
    ),
    (
        "zonal",
        {
            "resources": {"cpu": "200m", "memory": "128Mi"},
            "affinity": {
                "required": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
                "preferred": [{"weight": 50, "match": {"key": "zone", "operator": "In", "values": ["a"]}}],
            },
        },
    ),
    (
        "gpu",
        {
            "resources": {"cpu": "1", "memory": "2Gi"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
            ],
        },
    ),
    (
        "spot",
        {
            "resources": {"cpu": "150m", "memory": "96Mi"},
            "tolerations": [{"key": "spot", "operator": "Exists", "effect": "PreferNoSchedule"}],
            "topology_spread": [
                {"topology_key": "zone", "max_skew": 2, "when_unsatisfiable": "ScheduleAnyway"}
            ],
        },
    ),
]


def log(message: str) -> None:
    print(f"[scheduler_throughput] {message}", file=sys.stderr, flush=True)


# --- processes ------------------------------------------------------------------------------------


class BenchControlPlane(ControlPlane):
    """The harness's control plane, on 127.0.0.1 only, with a configurable number of
    scheduler and web processes."""

    web_host = "127.0.0.1"

    def __init__(
        self, services, *, schedulers: int, heartbeat: float, grace: float, web_workers: int = 1
    ) -> None:
        super().__init__(services)
        self.web_workers = web_workers
        self.schedulers = schedulers
        self.env.update(BERTH_AGENT_HEARTBEAT_SECONDS=f"{heartbeat:g}", BERTH_NODE_GRACE_SECONDS=f"{grace:g}")
        self.PROCESSES = ("web", "worker", "beat", *self.scheduler_names())

    def scheduler_names(self) -> list[str]:
        return ["scheduler", *(f"scheduler{index + 1}" for index in range(1, self.schedulers))]

    def _spawn(self, name: str, argv: list[str]) -> None:
        if name == "web" and self.web_workers > 1:
            argv = [*argv, "--workers", str(self.web_workers)]
        super()._spawn(name, argv)

    def start(self, timeout: float = 120.0) -> BenchControlPlane:
        super().start(timeout)
        for name in self.scheduler_names()[1:]:  # more than one: safe, not faster (docs/scheduling.md)
            argv = commands.scheduler(sys.executable)
            self._spawn(name, [f"{name}@%h" if arg == "scheduler@%h" else arg for arg in argv])
        return self

    def stop(self) -> None:
        for name in self.scheduler_names()[1:]:
            stop_process(self.procs.pop(name, None), timeout=15)
        super().stop()


def start_hollow(
    plane: ControlPlane, args: argparse.Namespace, token: str, state_dir: Path
) -> subprocess.Popen:
    log_path = plane.dir / "hollow.log"
    argv = [sys.executable, "-m", "agent.hollow", "--server", plane.base_url, "--join-token", token,
            "--count", str(args.nodes), "--seed", str(args.seed), "--connect-rate", str(args.connect_rate),
            "--state-dir", str(state_dir), "--progress-interval", "5",
            "--processes", str(args.hollow_processes)]  # fmt: skip
    dies_with_parent = die_with_parent()

    def preexec() -> None:
        # The fleet stands for thousands of machines with CPUs of their own: it runs ahead of
        # the control plane for the CPU (it does the same work either way, only sooner).
        # Starved, it lagged 5-10 s in bursts, every node's heartbeat with it, and the
        # control plane rightly saw thousands of healthy-but-late nodes go silent.
        with contextlib.suppress(OSError):
            os.nice(args.hollow_nice)
        # With the kernel's autogroup scheduling (on by default in desktop and many server
        # kernels), the CPU is shared between sessions, and a process's niceness only counts
        # within its own: this new session's whole group gets the niceness instead.
        with contextlib.suppress(OSError):
            fd = os.open("/proc/self/autogroup", os.O_WRONLY)
            try:
                os.write(fd, str(args.hollow_nice).encode())
            finally:
                os.close(fd)
        if dies_with_parent is not None:
            dies_with_parent()

    with open(log_path, "ab") as output:
        return subprocess.Popen(
            argv, cwd=REPO, env=child_env(plane.services.session), stdin=subprocess.DEVNULL,
            stdout=output, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec,
        )  # fmt: skip


def keep_logs(plane: ControlPlane, keep: Path) -> None:
    """Copy the control plane's and the fleet's logs to `keep` (before they go with the run)."""
    keep.mkdir(parents=True, exist_ok=True)
    for path in plane.dir.glob("*.log"):
        shutil.copy(path, keep / path.name)


def tree_rss(root: int) -> int:
    """Resident memory of a process and its descendants, in bytes."""
    return sum(proc_status(pid, "VmRSS") for pid in tree_pids(root))


# --- profiling -------------------------------------------------------------------------------------


class Profiler:
    """py-spy sampling the web process, the worker and scheduler(s) (with their pool children)
    and the hollow fleet."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))

    def available(self) -> bool:
        return Path(self.binary).exists()

    def start(self, targets: dict[str, int]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in targets.items():
            raw = self.out_dir / f"{name}.txt"
            self.procs[name] = subprocess.Popen(
                [self.binary, "record", "--pid", str(pid), "--subprocesses", "--rate", "50", "--nonblocking",
                 "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=open(self.out_dir / f"{name}.log", "wb"),
                preexec_fn=die_with_parent(),
            )  # fmt: skip

    def stop(self) -> dict[str, Any]:
        summary = {}
        for name, proc in self.procs.items():
            code = stop_process(proc, sig=signal.SIGINT, timeout=90)  # py-spy writes its file on SIGINT
            summary[name] = summarise_profile(self.out_dir / f"{name}.txt")
            if "error" in summary[name]:
                summary[name]["py_spy"] = f"exit {code}: {tail(self.out_dir / f'{name}.log', 5)}"
        self.procs.clear()
        return summary


def summarise_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """Top functions by own samples, and top project functions by samples spent inside them."""
    own: Counter[str] = Counter()
    inside: Counter[str] = Counter()
    total = 0
    try:
        lines = raw.read_text().splitlines()
    except OSError as exc:
        return {"error": str(exc)}
    for line in lines:
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [f for f in stack.split(";") if not f.startswith("process ")]
        if not frames:
            continue
        own[_short(frames[-1])] += count
        for frame in set(frames):
            if any(part in frame for part in ("orchestrator/", "nodes/", "web/", "agent/")):
                inside[_short(frame)] += count
    pct = lambda n: round(100 * n / total, 1) if total else 0.0  # noqa: E731
    return {
        "samples": total,
        "raw": str(raw),
        "top_own_pct": [[name, pct(n)] for name, n in own.most_common(top)],
        "top_project_inclusive_pct": [[name, pct(n)] for name, n in inside.most_common(top)],
    }


def _short(frame: str) -> str:
    # py-spy frames look like "function (path/to/file.py:123)": keep the function and short path.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
            break
    return f"{name} ({where.rsplit(':', 1)[0]})"


# --- the workload ---------------------------------------------------------------------------------


def deployment_sizes(replicas: int, seed: int) -> list[int]:
    """Deployment sizes adding up to `replicas`: a long tail (many small, a few big), about 50 each."""
    count = max(min(len(KINDS), replicas), min(replicas // 50, 1000))
    rng = random.Random(seed)
    weights = [rng.paretovariate(1.2) for _ in range(count)]
    total = sum(weights)
    sizes = [max(1, int(replicas * w / total)) for w in weights]
    while sum(sizes) > replicas:
        sizes[sizes.index(max(sizes))] -= 1
    sizes[sizes.index(max(sizes))] += replicas - sum(sizes)
    return sizes


# The mix's requests fit this many replicas on the hollow fleet's sizes; a bigger run
# divides the requests (and multiplies max_per_node) so that it still fits.
CALIBRATED_REPLICAS = 10_000


def _scaled(spec: dict[str, Any], factor: float) -> dict[str, Any]:
    if factor <= 1:
        return spec
    spec = dict(spec)
    resources = spec.get("resources") or {}
    cpu, memory = resources.get("cpu"), resources.get("memory")
    spec["resources"] = {
        "cpu": f"{max(1, int(_millicores(cpu) / factor))}m" if cpu else None,
        "memory": f"{max(1, int(_mebibytes(memory) / factor))}Mi" if memory else None,
    }
    if spec.get("max_per_node"):
        spec["max_per_node"] = int(spec["max_per_node"] * factor + 0.999)
    return spec


def _millicores(text: str) -> float:
    return float(text[:-1]) if text.endswith("m") else float(text) * 1000


def _mebibytes(text: str) -> float:
    return float(text[:-2]) * (1024 if text.endswith("Gi") else 1)


def deployment_bodies(replicas: int, seed: int, dropped: set[str]) -> list[dict[str, Any]]:
    bodies = []
    factor = replicas / CALIBRATED_REPLICAS
    for i, size in enumerate(deployment_sizes(replicas, seed)):
        kind, spec = KINDS[i % len(KINDS)]
        image = BASE_IMAGE if i % 3 == 0 else IMAGE_POOL[i % len(IMAGE_POOL)]
        body = {"name": f"{PREFIX}{i:04d}-{kind}", "image": image, "command": COMMAND, "replicas": size}
        body.update({k: v for k, v in _scaled(spec, factor).items() if k not in dropped})
        bodies.append(body)
    return bodies


def accepted_fields(plane: ControlPlane) -> tuple[set[str], dict[str, Any]]:
    """Which placement fields the API takes: POST a 0-replica probe with all of them, drop what it refuses."""
    dropped: set[str] = set()
    refused: dict[str, Any] = {}
    url = f"/api/v1/namespaces/{NAMESPACE}/deployments/"
    spec: dict[str, Any] = {}
    for _, kind_spec in KINDS:
        spec.update(kind_spec)
    for _ in range(len(PLACEMENT_FIELDS) + 1):
        body = {"name": "probe", "image": BASE_IMAGE, "replicas": 0}
        body.update({k: v for k, v in spec.items() if k not in dropped})
        response = plane.api.post(url, json=body)
        if response.status_code == 201:
            plane.api.delete(f"{url}probe/").raise_for_status()
            return dropped, refused
        errors = response.json() if response.status_code == 400 else {}
        bad = {key for key in errors if key in spec and key not in dropped}
        if not bad:
            raise RuntimeError(
                f"the probe deployment was refused: HTTP {response.status_code} {response.text[:500]}"
            )
        for key in bad:
            refused[key] = errors[key]
        dropped |= bad
    raise RuntimeError("the probe deployment kept being refused")


def apply_taints(plane: ControlPlane, names: list[str]) -> dict[str, Any]:
    """Taint every 20th node dedicated=gpu:NoSchedule and every 25th spot=true:PreferNoSchedule."""
    plan = {}
    for i, name in enumerate(names):
        taints = ([TAINT_GPU] if i % 20 == 7 else []) + ([TAINT_SPOT] if i % 25 == 3 else [])
        if taints:
            plan[name] = taints
    done = 0
    for name, taints in plan.items():
        response = plane.api.patch(f"/api/v1/nodes/{name}/", json={"taints": taints})
        if response.status_code in (404, 405) or (response.status_code == 400 and "taints" in response.text):
            note = (
                f"PATCH /api/v1/nodes/{{name}}/ taints not available (HTTP {response.status_code}); no taints"
            )
            log(note)
            return {"tainted_nodes": 0, "taints_note": note}
        response.raise_for_status()
        done += 1
    return {"tainted_nodes": done}


# --- measuring -------------------------------------------------------------------------------------

COUNTS = f"""
SELECT count(*) FILTER (WHERE r.node_id IS NOT NULL), count(*) FILTER (WHERE r.phase = 'Running')
FROM orchestrator_replica r JOIN orchestrator_deployment d ON d.id = r.deployment_id
WHERE d.name LIKE '{PREFIX}%' AND d.deleted_at IS NULL AND r.phase <> 'Terminating'
"""
PENDING_REASONS = f"""
SELECT r.message, count(*)
FROM orchestrator_replica r JOIN orchestrator_deployment d ON d.id = r.deployment_id
WHERE d.name LIKE '{PREFIX}%' AND d.deleted_at IS NULL AND r.node_id IS NULL AND r.phase <> 'Terminating'
GROUP BY r.message ORDER BY count(*) DESC LIMIT 3
"""

SCHEDULED_SPAN = f"""
SELECT min(r.scheduled_at), max(r.scheduled_at)
FROM orchestrator_replica r JOIN orchestrator_deployment d ON d.id = r.deployment_id
WHERE d.name LIKE '{PREFIX}%' AND d.deleted_at IS NULL
"""
NODE_EVENTS = "SELECT reason, sum(count)::int FROM orchestrator_event WHERE kind = 'Node' GROUP BY reason"
NOT_READY = "SELECT status_reason, count(*) FROM nodes_node WHERE status = 'NotReady' GROUP BY status_reason"


def ready_nodes(db: psycopg.Connection) -> int:
    return db.execute("SELECT count(*) FROM nodes_node WHERE status = 'Ready'").fetchone()[0]


def wait_nodes_ready(db, hollow, plane, nodes: int, timeout: float) -> tuple[float | None, int]:
    """Seconds until `nodes` nodes are Ready (None if not within `timeout`), and how many are."""
    started = time.monotonic()
    last_log = 0.0
    while True:
        ready = ready_nodes(db)
        now = time.monotonic()
        if ready >= nodes:
            return now - started, ready
        if hollow.poll() is not None:
            raise RuntimeError(
                f"the hollow nodes exited ({hollow.returncode}):\n{tail(plane.dir / 'hollow.log')}"
            )
        plane.check_alive()
        if now - started > timeout:
            log(f"only {ready}/{nodes} nodes Ready after {timeout:g} s; going on with those")
            return None, ready
        if now - last_log >= 5:
            log(f"{ready}/{nodes} nodes Ready ({now - started:.0f} s)")
            last_log = now
        time.sleep(0.5)


def hollow_progress(plane: ControlPlane, processes: int = 1) -> str:
    """The hollow processes' last progress lines (one per process, most likely)."""
    try:
        text = (plane.dir / "hollow.log").read_text(errors="replace")  # warnings may bury it: read it all
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.startswith("hollow: ") and " connected, " in line]
    return " | ".join(line.removeprefix("hollow: ") for line in lines[-processes:])


class WaitSampler:
    """What PostgreSQL's busy sessions wait on, sampled every `interval` s while the
    workload runs: lock waits between the scheduler, dispatch and report application show
    here (py-spy sees them only as time inside psycopg)."""

    QUERY = """
    SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, ''),
           left(regexp_replace(query, '\\s+', ' ', 'g'), 70)
    FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND datname = %s
    """

    def __init__(self, url: str, database: str, interval: float = 0.25) -> None:
        self.url, self.database, self.interval = url, database, interval
        self.samples = 0
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as db:
            while not self._stop.wait(self.interval):
                self.samples += 1
                for kind, event, query in db.execute(self.QUERY, [self.database]):
                    self.counts[f"{kind}:{event} {query}"] += 1

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        top = self.counts.most_common(12)
        per_sample = [[what, round(n / max(self.samples, 1), 2)] for what, n in top]
        return {"samples": self.samples, "top": per_sample}


class StatementStats:
    """PostgreSQL's own account of the window (pg_stat_statements): the statements that took
    the most execution time, with their calls. Planning and the protocol's round trips are
    not in it; the CPU figures are."""

    SETTINGS = ("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all")
    QUERY = """
    SELECT left(regexp_replace(query, '\\s+', ' ', 'g'), 160), calls, total_exec_time, rows
    FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT %s
    """

    def __init__(self, db: psycopg.Connection) -> None:
        self.db = db
        self.tables: dict[str, tuple[int, int]] = {}

    # Updates in place (HOT: no index touched) against all updates, per table.
    TABLES = """
    SELECT relname, n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables
    WHERE relname IN ('orchestrator_replica', 'nodes_node', 'orchestrator_deployment')
    """

    SIZES = """
    SELECT relname, pg_relation_size(relid) / 1024, n_live_tup, n_dead_tup, autovacuum_count
    FROM pg_stat_user_tables
    WHERE relname IN ('orchestrator_replica', 'nodes_node', 'orchestrator_deployment')
    """

    def start(self) -> None:
        self.db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        self.db.execute("SELECT pg_stat_statements_reset()")
        self.tables = {name: (upd, hot) for name, upd, hot in self.db.execute(self.TABLES)}

    def stop(self, top: int = 15) -> dict[str, Any]:
        (total_ms, calls), rows = (
            self.db.execute("SELECT sum(total_exec_time), sum(calls) FROM pg_stat_statements").fetchone(),
            self.db.execute(self.QUERY, [top]).fetchall(),
        )
        # The statistics collector reports with a delay (at most a second): the counts are
        # a lower bound when read right at the end.
        updates = {
            name: {
                "updates": upd - self.tables.get(name, (0, 0))[0],
                "in_place": hot - self.tables.get(name, (0, 0))[1],
            }
            for name, upd, hot in self.db.execute(self.TABLES)
        }
        # How big each table is at the end against its live rows (dead versions a scan still
        # visits until vacuum or pruning frees them), and how often autovacuum ran on it.
        for name, kib, live, dead, vacuums in self.db.execute(self.SIZES):
            updates.setdefault(name, {}).update(kib=kib, live_rows=live, dead_rows=dead, autovacuums=vacuums)
        return {
            "statements": int(calls or 0),
            "exec_s": round((total_ms or 0) / 1000, 2),
            "updates": updates,
            "top": [
                {"query": query, "calls": n, "total_ms": round(ms, 1),
                 "mean_us": round(1000 * ms / max(n, 1)), "rows": r}
                for query, n, ms, r in rows
            ],
        }  # fmt: skip


IDLE_SAMPLE_SECONDS = 5.0
ROUND_IDLE_SAMPLE_SECONDS = 2.0


def cpu_per_second(processes: dict[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU time per second over the next `seconds`."""
    before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    time.sleep(seconds)  # a measurement window, not a wait for a condition
    return {name: round((cpu_seconds(pid) - before[name]) / seconds, 3) for name, pid in processes.items()}


def machine_reference(rounds: int = 5, per_round: int = 2000) -> int:
    """The reference, measured in the same run: how many rounds a second this machine does of
    a fixed pure-Python workload (a desired frame's entries encoded and decoded, a
    placement-like scoring over dicts), the best of a few. The same code on this machine
    has been seen to run a fifth to two fifths slower in some phases than in others, all
    processes alike: comparing placements_per_s between runs means little without it."""
    frame = {
        "type": "desired",
        "generation": 7,
        "replicas": [
            {"name": f"web-{i:05d}", "namespace": "default", "image": "nginx:1.27",
             "env": {"A": str(i)}, "resources": {"cpu_millis": 250, "memory_bytes": 2**28}}
            for i in range(8)
        ],
    }  # fmt: skip
    nodes = [{"cpu": 4000 - i, "memory": 2**33 + i, "zone": "abc"[i % 3]} for i in range(50)]
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(per_round):
            json.loads(json.dumps(frame))
            max(nodes, key=lambda n: (n["cpu"] * 3 + n["memory"] // 2**20, n["zone"]))
        best = min(best, time.perf_counter() - started)
    return round(per_round / best)


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


# Kept per round with --rounds (the first round's figures are also the top-level ones).
ROUND_FIGURES = (
    "machine_reference_per_s",
    "fleet_idle_cpu_per_s",
    "post_s",
    "post_latency_ms",
    "placements_per_s",
    "all_placed_s",
    "placed_after_posts_s",
    "all_running_s",
    "cpu_s",
    "cpu_placed_s",
    "steal_placed_s",
    "agents_per_web_process",
    "api_connections_per_web_process",
)
LEFT_OVER = """
SELECT count(*) FROM orchestrator_replica r JOIN orchestrator_deployment d ON d.id = r.deployment_id
WHERE d.name = ANY(%s)
"""


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    """p50, p90 and the maximum of a list of durations, in milliseconds."""
    ordered = sorted(seconds)
    if not ordered:
        return {}
    at = lambda q: round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)  # noqa: E731
    return {"p50": at(0.5), "p90": at(0.9), "max": round(1000 * ordered[-1], 1)}


def place_round(plane, db, args, bodies, processes, hollow) -> dict[str, Any]:
    """POST the deployments and wait until every replica is placed and Running: one
    measurement. Returns its figures (see the module's doc)."""
    result: dict[str, Any] = {"machine_reference_per_s": machine_reference()}
    # The heartbeats' cost just before the round, the same work every time: a gauge of the
    # machine's phase that the small reference has missed (38-42k in rounds where every
    # process took twice the CPU for the same work; the web's idle cost read 0.15-0.18, not 0.11).
    at_rest = {name: processes[name] for name in ("web", "hollow")}
    result["fleet_idle_cpu_per_s"] = cpu_per_second(at_rest, ROUND_IDLE_SAMPLE_SECONDS)
    cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
    steal_before = steal_seconds()
    if args.pause_fleet:
        os.killpg(hollow.pid, signal.SIGSTOP)
    log(f"creating {len(bodies)} deployments, {args.replicas} replicas")
    url = f"/api/v1/namespaces/{NAMESPACE}/deployments/"
    started = time.monotonic()

    sessions = threading.local()  # one HTTP session per thread, kept alive as API clients do
    latencies: list[float] = []

    def post(body):
        if not hasattr(sessions, "client"):
            sessions.client = plane.client(plane.api_token)
        sent = time.perf_counter()
        response = sessions.client.post(url, json=body)
        latencies.append(time.perf_counter() - sent)
        if response.status_code != 201:
            raise RuntimeError(f"POST {body['name']}: HTTP {response.status_code} {response.text[:500]}")

    with ThreadPoolExecutor(max_workers=args.post_threads) as pool:
        list(pool.map(post, bodies))
        posted = time.monotonic()
        # Which web process each client's kept-alive connection landed on (the kernel's
        # choice), and each one's agents: a suspect for slow runs (not borne out so far).
        web = plane.procs["web"].pid
        workers = tree_pids(web)[1:] or [web]  # the supervisor holds the socket too, unused
        spread = connections_per_server(plane.port, workers, os.getpid())
        result["api_connections_per_web_process"] = spread["client"]
        result["agents_per_web_process"] = [
            n - c for n, c in zip(spread["all"], spread["client"], strict=True)
        ]
    result["post_s"] = round(posted - started, 2)
    result["post_latency_ms"] = percentiles_ms(latencies)
    log(f"posted in {result['post_s']} s; waiting for placements")

    placed_s = running_s = None
    fine_poll = min(0.25, 0.05 * max(1.0, args.replicas / 10_000))
    last_change, last_seen, last_log = started, (-1, -1), 0.0
    while True:
        placed, running = db.execute(COUNTS).fetchone()
        now = time.monotonic()
        if placed_s is None and placed >= args.replicas:
            placed_s = now - started
            cpu_placed = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
            steal_placed = steal_seconds() - steal_before
            log(f"all {args.replicas} replicas placed in {placed_s:.1f} s")
            if args.pause_fleet:
                os.killpg(hollow.pid, signal.SIGCONT)
        if running >= args.replicas:
            running_s = now - started
            log(f"all {args.replicas} replicas Running in {running_s:.1f} s")
            break
        if (placed, running) != last_seen:
            last_change, last_seen = now, (placed, running)
        if now - last_change > args.stall or now - started > args.timeout:
            log(f"giving up: {placed} placed, {running} Running after {now - started:.0f} s")
            break
        if now - last_log >= 5:
            log(f"{placed} placed, {running} Running ({now - started:.0f} s)")
            last_log = now
        plane.check_alive()
        # Counting is a query over every replica, and the machine is the one measured:
        # coarse polls until the end is near, fine ones then (the figures' resolution),
        # as fine as the run's size calls for: at 100,000 replicas a count takes tens of
        # milliseconds of PostgreSQL, and polls every 0.05 s took a third of its execution time.
        near = (running if placed_s is not None else placed) >= 0.9 * args.replicas
        time.sleep(fine_poll if near else 0.25)
    window = time.monotonic() - started

    result["placements_per_s"] = round(args.replicas / placed_s, 1) if placed_s else None
    # The scheduler's own pace: placements over the span of their commits (scheduled_at).
    first, last = db.execute(SCHEDULED_SPAN).fetchone()
    if first and last and last > first:
        result["scheduled_span_s"] = round((last - first).total_seconds(), 2)
        result["scheduler_commits_per_s"] = round(args.replicas / (last - first).total_seconds(), 1)
    result["all_placed_s"] = round(placed_s, 2) if placed_s else None
    result["placed_after_posts_s"] = round(max(0.0, placed_s - (posted - started)), 2) if placed_s else None
    result["all_running_s"] = round(running_s, 2) if running_s else None
    placed, running = db.execute(COUNTS).fetchone()
    if placed < args.replicas:
        result["placed"] = placed
        result["pending"] = args.replicas - placed
        result["pending_reasons_top3"] = [[m, n] for m, n in db.execute(PENDING_REASONS)]
    if running < args.replicas:
        result["running"] = running
    result["cpu_s"] = {name: round(cpu_seconds(pid) - cpu_before[name], 1) for name, pid in processes.items()}
    if placed_s:  # the placing alone (with --pause-fleet, the fleet did nothing meanwhile)
        result["cpu_placed_s"] = {name: round(seconds, 1) for name, seconds in cpu_placed.items()}
        result["steal_placed_s"] = round(steal_placed, 2)
    result["cpu_window_s"] = round(window, 1)
    return result


def clear_round(plane, db, args, names: list[str]) -> dict[str, float]:
    """Delete a round's deployments and wait until their replicas are gone from the nodes
    (the agents stopped them and said so), so that the next round starts on empty nodes.
    Returns how long the DELETEs took and how long until the replicas were gone (from the
    first DELETE)."""
    url = f"/api/v1/namespaces/{NAMESPACE}/deployments/"
    sessions = threading.local()

    def delete(name):
        if not hasattr(sessions, "client"):
            sessions.client = plane.client(plane.api_token)
        response = sessions.client.delete(f"{url}{name}/")
        if response.status_code not in (204, 404):
            raise RuntimeError(f"DELETE {name}: HTTP {response.status_code} {response.text[:500]}")

    first_delete = time.monotonic()
    with ThreadPoolExecutor(max_workers=args.post_threads) as pool:
        list(pool.map(delete, names))
    started, last_log = time.monotonic(), 0.0
    while (left := db.execute(LEFT_OVER, [names]).fetchone()[0]) > 0:
        now = time.monotonic()
        if now - started > args.timeout:
            raise RuntimeError(f"{left} replicas of the last round still there after {args.timeout:.0f} s")
        if now - last_log >= 5:
            log(f"{left} replicas of the last round still there ({now - started:.0f} s)")
            last_log = now
        plane.check_alive()
        time.sleep(0.5)  # polling PostgreSQL for the condition
    log(f"the last round's replicas are gone after {time.monotonic() - started:.1f} s")
    return {
        "delete_s": round(started - first_delete, 2),
        "replicas_gone_s": round(time.monotonic() - first_delete, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--replicas", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--connect-rate", type=float, default=200.0, help="hollow nodes started per second")
    parser.add_argument(
        "--hollow-processes",
        type=int,
        default=2,
        help="processes the hollow fleet is split over (kubemark runs many; one lags in bursts)",
    )
    parser.add_argument(
        "--hollow-nice",
        type=int,
        default=-10,
        help="the hollow fleet's niceness (negative: ahead of the control plane for the CPU; needs root)",
    )
    parser.add_argument("--schedulers", type=int, default=1, help="scheduler processes (one is the default)")
    parser.add_argument("--web-workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--post-threads", type=int, default=1, help="clients POSTing deployments at once")
    parser.add_argument("--heartbeat", type=float, default=2.0, help="agents' heartbeat interval (s)")
    parser.add_argument(
        "--grace", type=float, default=10.0, help="NotReady after this long without heartbeat"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="bound of each wait (s)")
    parser.add_argument("--stall", type=float, default=120.0, help="give up when nothing moves this long (s)")
    parser.add_argument("--no-taints", action="store_true")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure this many times on the same fleet (each round deletes the last round's "
        "deployments and waits for their replicas to go): a median and a minimum from one onboarding",
    )
    parser.add_argument("--profile", action="store_true", help="sample web and workers with py-spy")
    parser.add_argument("--pg-waits", action="store_true", help="sample what PostgreSQL sessions wait on")
    parser.add_argument(
        "--pg-statements", action="store_true", help="PostgreSQL's costliest statements of the window"
    )
    parser.add_argument("--profile-dir", default=str(REPO / "test-artifacts" / "scheduler-profile"))
    parser.add_argument("--keep-logs", metavar="DIR", help="copy the control plane's and fleet's logs here")
    parser.add_argument(
        "--pause-fleet",
        action="store_true",
        help="a diagnostic: stop the hollow fleet (SIGSTOP) from the first POST until all are placed, "
        "so that the figure is the control plane's alone, with no reports or heartbeats (needs --grace 60)",
    )
    args = parser.parse_args()

    if args.pause_fleet and args.grace < 60:
        parser.error("--pause-fleet needs --grace 60 or more: a paused fleet sends no heartbeats")
    signal.signal(signal.SIGTERM, _interrupt)  # so that `finally` tears everything down
    result: dict[str, Any] = {"nodes": args.nodes, "replicas": args.replicas}
    log("starting PostgreSQL and Redis")
    services = start_services(StatementStats.SETTINGS if args.pg_statements else ())
    # The control plane runs as in production, not with the test suite's settings: no
    # DEBUG (query logging); its connection pool is on (tests/harness/controlplane.py).
    os.environ.update(BERTH_DEBUG="false", BERTH_SSL_REDIRECT="false", BERTH_ALLOWED_HOSTS="*")
    plane = BenchControlPlane(
        services,
        schedulers=args.schedulers,
        heartbeat=args.heartbeat,
        grace=args.grace,
        web_workers=args.web_workers,
    )
    hollow: subprocess.Popen | None = None
    profiler: Profiler | None = None
    try:
        log(f"starting the control plane ({args.schedulers} scheduler process(es))")
        plane.start()
        token = plane.new_join_token()
        db = psycopg.connect(services.database_url(DATABASE), autocommit=True)

        log(f"starting {args.nodes} hollow nodes at {args.connect_rate:g}/s")
        hollow = start_hollow(plane, args, token, services.root / "hollow-state")
        ready_s, ready = wait_nodes_ready(db, hollow, plane, args.nodes, args.timeout)
        result["nodes_ready_s"] = round(ready_s, 1) if ready_s is not None else None
        if ready_s is None:
            result["nodes_ready_at_timeout"] = ready
        result["hollow_rss_mib"] = round(tree_rss(hollow.pid) / 2**20, 1)
        result["hollow_rss_kib_per_node"] = round(tree_rss(hollow.pid) / 1024 / args.nodes, 1)
        log(f"{ready}/{args.nodes} nodes Ready after {result['nodes_ready_s']} s")

        names = [row[0] for row in db.execute("SELECT name FROM nodes_node ORDER BY name")]
        result.update({"tainted_nodes": 0} if args.no_taints else apply_taints(plane, names))
        dropped, refused = accepted_fields(plane)
        if dropped:
            log(f"the API refuses {sorted(dropped)}: benchmarking without them ({refused})")
            result["fields_refused"] = refused
        bodies = deployment_bodies(args.replicas, args.seed, dropped)
        result["deployments"] = len(bodies)
        result["mix"] = dict(Counter(b["name"].rsplit("-", 1)[1] for b in bodies))

        try:
            autogroup = Path(f"/proc/{hollow.pid}/autogroup").read_text().strip()
        except OSError:
            autogroup = None
        processes = {
            "web": plane.procs["web"].pid,
            "beat": plane.procs["beat"].pid,
            "worker": plane.procs["worker"].pid,
            "hollow": hollow.pid,
            "postgres": services.postgres.proc.pid,
            "redis": services.redis.pid,
        }
        for name in plane.scheduler_names():
            processes[name] = plane.procs[name].pid
        if args.profile:
            profiler = Profiler(Path(args.profile_dir))
            if profiler.available():
                profiler.start(
                    {
                        k: v
                        for k, v in processes.items()
                        if k in ("web", "hollow", "worker") or k.startswith("scheduler")
                    }
                )
                time.sleep(1)  # py-spy attaches
            else:
                log(f"--profile: py-spy not found at {profiler.binary}; pip install py-spy")
                profiler = None
        # The fleet at rest (heartbeats, the node monitor): what each process burns per second
        # before any deployment exists, the floor under the figures below.
        result["idle_cpu_per_s"] = cpu_per_second(processes, IDLE_SAMPLE_SECONDS)
        sampler = WaitSampler(services.database_url(DATABASE), DATABASE) if args.pg_waits else None
        if sampler:
            sampler.start()
        statements = StatementStats(db) if args.pg_statements else None
        if statements:
            statements.start()
        first = place_round(plane, db, args, bodies, processes, hollow)
        result.update(first)
        if statements:
            result["pg_statements"] = statements.stop()
        if sampler:
            # busy sessions per sample, by what they wait on (CPU: running) and query
            result["pg_active_per_sample"] = sampler.stop()
            sampler = None
        if args.rounds > 1:
            rounds = [{k: first.get(k) for k in ROUND_FIGURES}]
            names = [b["name"] for b in bodies]
            for number in range(2, args.rounds + 1):
                log(f"round {number} of {args.rounds}: deleting the last round's deployments")
                cleared = clear_round(plane, db, args, names)
                # New names: the deleted ones may still be finishing (soft-deleted rows).
                round_bodies = [{**b, "name": f"{b['name']}-r{number}"} for b in bodies]
                names = [b["name"] for b in round_bodies]
                figures = place_round(plane, db, args, round_bodies, processes, hollow)
                rounds.append({k: figures.get(k) for k in ROUND_FIGURES})
                rounds[-2]["cleared"] = cleared  # the deletion of the round before
            rates = sorted(r["placements_per_s"] or 0.0 for r in rounds)
            result["rounds"] = rounds
            result["placements_per_s_rounds"] = [r["placements_per_s"] for r in rounds]
            result["placements_per_s_median"] = (
                rates[len(rates) // 2]
                if len(rates) % 2
                else round((rates[len(rates) // 2 - 1] + rates[len(rates) // 2]) / 2, 1)
            )
            result["placements_per_s_min"] = rates[0]
        result["machine_reference_after_per_s"] = machine_reference()
        if statements:
            result["pg_statements"] = statements.stop()
        result["hollow_rss_end_mib"] = round(tree_rss(hollow.pid) / 2**20, 1)
        result["web_rss_end_mib"] = round(tree_rss(plane.procs["web"].pid) / 2**20, 1)
        result["nodes_ready_end"] = ready_nodes(db)
        result["hollow_end"] = hollow_progress(plane, args.hollow_processes)
        result["node_events"] = dict(db.execute(NODE_EVENTS).fetchall())
        not_ready = dict(db.execute(NOT_READY).fetchall())
        if not_ready:
            result["nodes_not_ready_end"] = not_ready
        result["setup"] = {
            "schedulers": args.schedulers,
            "web_workers": args.web_workers,
            "post_threads": args.post_threads,
            "heartbeat_s": args.heartbeat,
            "grace_s": args.grace,
            "connect_rate": args.connect_rate,
            "hollow_processes": args.hollow_processes,
            "hollow_nice": args.hollow_nice,
            "hollow_autogroup": autogroup,  # the kernel's scheduling group of the fleet, if any
            "fleet_paused_while_placing": args.pause_fleet,
            "cores": os.cpu_count(),
        }
        if sampler:
            # busy sessions per sample, by what they wait on (CPU: running) and query
            result["pg_active_per_sample"] = sampler.stop()
        if profiler is not None:
            result["profile"] = profiler.stop()
            profiler = None
    except Exception as exc:
        # Still one JSON object, with what was measured before it broke.
        result["error"] = f"{type(exc).__name__}: {exc}"[:3000]
        exit_code = 1
    else:
        exit_code = 0
    finally:
        log("tearing down")
        if profiler is not None:
            profiler.stop()
        if hollow is not None:
            if args.pause_fleet:
                with contextlib.suppress(OSError):
                    os.killpg(hollow.pid, signal.SIGCONT)  # a stopped process ignores the stop signal
            stop_process(hollow, timeout=20)
        plane.stop()
        if args.keep_logs:
            keep_logs(plane, Path(args.keep_logs))
            log(f"logs kept in {args.keep_logs}")
        services.stop()
    print(json.dumps(result))
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
