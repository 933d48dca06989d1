"""`python -m agent.hollow`: thousands of simulated nodes in one process, for scale tests.

Kubemark's idea: each hollow node is a real agent (the same enrollment, Session, heartbeat,
Reconciler and status code as `python -m agent`, wired by `daemon.serve_node`) over an
in-memory engine (runtime/fake.py) instead of Docker. The control plane cannot tell them
apart, so they measure it; they never stand in for real hosts in feature tests.

    python -m agent.hollow --server http://127.0.0.1:8000 --join-token berth_join_... \\
        --count 1000 [--prefix hollow-] [--state-dir DIR] [--seed 1] [--connect-rate 200] [--processes 1]

The fleet is a deterministic mix drawn from `--seed`: sizes (2-16 cores, 4-32 GiB), labels
`zone` (a-d), `disk` (ssd/hdd), `tier` (web/batch/general), `hollow=true`, and a few images
each. Nodes start at most `--connect-rate` per second, with a bounded number of handshakes
in flight, so a large fleet does not knock all at once; credentials are kept per node in
`--state-dir` and reused on a rerun (no new enrollment). Progress goes to stderr, one line
per process. `--processes N` splits the fleet over N forked processes (every Nth node each).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.config import AgentConfig, ConfigError, load_config
from agent.daemon import serve_node
from agent.enroll import Enroller, obtain_credential
from agent.reporter import StatusReporter
from agent.runtime.fake import FakeRuntime

log = logging.getLogger("agent.hollow")

GIB = 1 << 30
# (millicores, bytes, weight): mostly mid-sized servers, a few big ones.
SIZES = ((2000, 4 * GIB, 2), (4000, 8 * GIB, 4), (8000, 16 * GIB, 3), (16000, 32 * GIB, 1))
ZONES = ("a", "b", "c", "d")
TIERS = (("web", 5), ("batch", 3), ("general", 2))
BASE_IMAGE = "berth-test/busybox:1"
# Images a hollow node may hold already; benchmarks deploy some of them (image locality).
IMAGE_POOL = tuple(f"hollow/app-{i}:1" for i in range(20))
WELCOME_TIMEOUT = 30.0  # a handshake slot is given back after this long, welcomed or not


@dataclass(frozen=True)
class NodeProfile:
    name: str
    cpu_millis: int
    memory_bytes: int
    labels: dict[str, str]
    images: tuple[str, ...]


def fleet(count: int, *, prefix: str = "hollow-", seed: int = 1) -> list[NodeProfile]:
    """The same `count` nodes for the same seed: names `<prefix>00001`, sizes, labels, images."""
    rng = random.Random(seed)
    width = max(5, len(str(count)))
    sizes = [s[:2] for s in SIZES]
    size_weights = [s[2] for s in SIZES]
    tiers = [t[0] for t in TIERS]
    tier_weights = [t[1] for t in TIERS]
    profiles = []
    for i in range(1, count + 1):
        cpu, memory = rng.choices(sizes, size_weights)[0]
        labels = {
            "zone": rng.choice(ZONES),
            "disk": "ssd" if rng.random() < 0.4 else "hdd",
            "tier": rng.choices(tiers, tier_weights)[0],
            "hollow": "true",
        }
        images = (BASE_IMAGE, *sorted(rng.sample(IMAGE_POOL, rng.randint(0, 5))))
        profiles.append(NodeProfile(f"{prefix}{i:0{width}d}", cpu, memory, labels, images))
    return profiles


class Pacer:
    """Hands out start slots at most `rate` per second, in call order."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self._next = 0.0

    async def wait(self) -> None:
        now = asyncio.get_running_loop().time()
        slot = max(now, self._next)
        self._next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


@dataclass
class FleetCounts:
    started: int = 0  # have a credential and run their session
    connected: int = 0  # welcomed by the control plane right now
    connections: int = 0  # welcomed connections so far (reconnections count again)


class CountingReporter(StatusReporter):
    """The agent's status reporter; its `run` spans exactly one welcomed connection."""

    def __init__(self, counts: FleetCounts, welcomed: asyncio.Event) -> None:
        super().__init__()
        self._counts = counts
        self._welcomed = welcomed

    async def run(
        self,
        send: Callable[[str], Awaitable[None]],
        snapshot: Callable[[], dict[str, Any]],
        ready: Callable[[], bool] = lambda: True,
        partial: bool = False,
    ) -> None:
        self._counts.connected += 1
        self._counts.connections += 1
        self._welcomed.set()
        try:
            await super().run(send, snapshot, ready, partial)
        finally:
            self._counts.connected -= 1


class HollowNode:
    def __init__(self, profile: NodeProfile, template: AgentConfig, *, latency: float = 0.0) -> None:
        self.profile = profile
        self.config = replace(
            template,
            name=profile.name,
            state_dir=template.state_dir / profile.name,
            labels=profile.labels,
        )
        self.runtime = FakeRuntime(
            profile.name,
            cpu_millis=profile.cpu_millis,
            memory_bytes=profile.memory_bytes,
            images=profile.images,
            latency=latency,
        )

    async def run(self, pacer: Pacer, handshakes: asyncio.Semaphore, counts: FleetCounts) -> None:
        """Enroll (or reuse the stored credential) and serve, until cancelled."""
        welcomed = asyncio.Event()
        enroller = Enroller(self.config)
        async with handshakes:
            await pacer.wait()
            credential = await obtain_credential(enroller)
            engine = await self.runtime.engine_info()
            counts.started += 1
            reporter = CountingReporter(counts, welcomed)
            serving = asyncio.create_task(
                serve_node(self.config, enroller, self.runtime, engine, credential.node, reporter=reporter),
                name=f"hollow-{self.profile.name}",
            )
            # Hold the handshake slot until welcomed, so a slow control plane slows the start.
            waiting = asyncio.create_task(welcomed.wait())
            await asyncio.wait(
                {waiting, serving}, timeout=WELCOME_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
            )
            waiting.cancel()
        await serving


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def report_progress(nodes: Sequence[HollowNode], counts: FleetCounts, interval: float) -> None:
    started = time.monotonic()
    last = None
    frozen = False
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval)
        late = loop.time() - before - interval
        if late >= LOOP_LAG_REPORTED:
            # Every node's heartbeat waited as long: past the grace the control plane sees
            # them go silent (not the control plane's fault: this one process is behind).
            print(
                f"hollow: {time.strftime('%H:%M:%S')} event loop ran {late:.1f} s late",
                file=sys.stderr,
                flush=True,
            )
        if not frozen and counts.connected == len(nodes):
            # What the fleet holds once up (sessions, credentials, profiles) lives as long as
            # it does: taken out of garbage collection, full collections stop walking it
            # (they paused every node up to 3.6 s at 5,000 nodes, and heartbeats with them).
            gc.freeze()
            frozen = True
        running = sum(len(node.runtime.running()) for node in nodes)
        line = (
            f"hollow: {counts.connected}/{len(nodes)} connected, {counts.started} started, "
            f"{running} containers running, rss {rss_bytes() >> 20} MiB"
        )
        if line != last:
            print(f"{line} ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
            last = line


async def run_fleet(
    profiles: Sequence[NodeProfile],
    template: AgentConfig,
    *,
    connect_rate: float,
    latency: float = 0.0,
    progress_interval: float = 2.0,
) -> None:
    """Run every node until cancelled (or until one fails unexpectedly)."""
    loop = asyncio.get_running_loop()
    # Enrollment is a blocking HTTP call in a thread: enough threads to keep up with the rate.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="hollow-enroll"))
    nodes = [HollowNode(p, template, latency=latency) for p in profiles]
    counts = FleetCounts()
    pacer = Pacer(connect_rate)
    handshakes = asyncio.Semaphore(max(16, int(connect_rate)))
    print(
        f"hollow: starting {len(nodes)} node(s) against {template.server} at most {connect_rate:g}/s; "
        f"credentials in {template.state_dir}",
        file=sys.stderr,
        flush=True,
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(report_progress(nodes, counts, progress_interval), name="hollow-progress")
        for node in nodes:
            group.create_task(node.run(pacer, handshakes, counts), name=f"hollow-start-{node.profile.name}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m agent.hollow", description="Run many simulated (hollow) nodes in one process."
    )
    parser.add_argument("--server", required=True, help="control plane URL, e.g. http://127.0.0.1:8000")
    parser.add_argument("--join-token", help="join token to enroll nodes that have no stored credential")
    parser.add_argument("--count", type=int, required=True, help="how many nodes")
    parser.add_argument("--prefix", default="hollow-", help="node name prefix (default: hollow-)")
    parser.add_argument(
        "--state-dir",
        help="where each node keeps its credential (reused on a rerun); default: a temporary one",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the fleet's sizes and labels")
    parser.add_argument(
        "--connect-rate", type=float, default=200.0, help="nodes started per second at most (default 200)"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="seconds each engine action takes")
    parser.add_argument("--progress-interval", type=float, default=2.0, help="seconds between progress lines")
    parser.add_argument("--log-level", default="WARNING", help="of the agents' logs (default: WARNING)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="split the fleet over this many processes, each running every Nth node (default 1)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.count < 1 or args.connect_rate <= 0 or args.latency < 0 or not 1 <= args.processes <= args.count:
        print(
            "hollow: --count must be at least 1, --connect-rate positive, --latency >= 0, "
            "--processes between 1 and --count",
            file=sys.stderr,
        )
        return 2
    temporary = args.state_dir is None
    state_dir = Path(args.state_dir or tempfile.mkdtemp(prefix="berth-hollow-"))
    profiles = fleet(args.count, prefix=args.prefix, seed=args.seed)
    try:
        template = load_config(
            ["--server", args.server, "--name", profiles[0].name, "--state-dir", str(state_dir)]
            + (["--join-token", args.join_token] if args.join_token else []),
            environ={},
        )
        if not args.join_token and not (state_dir / profiles[0].name / "credential.json").exists():
            raise ConfigError("--join-token is required: no credentials stored in --state-dir yet")
    except ConfigError as exc:
        print(f"hollow: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("websockets").setLevel(max(logging.INFO, logging.getLogger().level))
    _raise_open_files_limit()
    # Thousands of sessions allocate fast: young collections less often, so that fewer
    # short-lived objects (frames, statuses) survive into the generations full collections walk.
    gc.set_threshold(50_000, 20, 10)
    # Several processes, as kubemark runs its hollow nodes in many pods: one process for
    # thousands of nodes lags behind in bursts (every node's heartbeat with it), which a
    # fleet of real servers never does. Forked before any loop or thread exists.
    shard, children = 0, []
    for index in range(1, args.processes):
        pid = os.fork()
        if pid == 0:
            shard, children = index, []
            _die_with_parent()
            break
        children.append(pid)
    profiles = profiles[shard :: args.processes]
    args.connect_rate /= args.processes
    _watch_gc_pauses()
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(_main(profiles, template, args))
    except KeyboardInterrupt:
        pass
    finally:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if temporary and shard == 0:
            shutil.rmtree(state_dir, ignore_errors=True)
    return 0


def _die_with_parent() -> None:
    """A forked shard gets SIGTERM when the first process dies (Linux), even if killed outright."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def _main(profiles: Sequence[NodeProfile], template: AgentConfig, args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await run_fleet(
            profiles,
            template,
            connect_rate=args.connect_rate,
            latency=args.latency,
            progress_interval=args.progress_interval,
        )
    except asyncio.CancelledError:
        print("hollow: stopping", file=sys.stderr, flush=True)


GC_PAUSE_REPORTED = 0.5  # seconds


LOOP_LAG_REPORTED = 2.0  # seconds


def _watch_gc_pauses() -> None:
    """Say when a garbage collection stops the whole fleet for long: every node's heartbeat
    waits for it, and past the grace the control plane sees them all go silent at once."""
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and (paused := time.perf_counter() - started[0]) >= GC_PAUSE_REPORTED:
            print(
                f"hollow: garbage collection (generation {info.get('generation')}) paused every node "
                f"{paused:.1f} s",
                file=sys.stderr,
                flush=True,
            )

    gc.callbacks.append(callback)


def _loop_factory():
    """uvloop when it is installed (the control plane's requirements have it; uvicorn uses it
    too): thousands of sessions in one process spend most of their time in the event loop."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _raise_open_files_limit() -> None:
    """One socket per node: allow as many open files as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


if __name__ == "__main__":
    sys.exit(main())
