"""The agent's cost of one status frame: a node running N replicas, one of which changed since
the last frame (the common case: replicas start, stop or turn ready one at a time).

Per frame, as the agent's status reporter does it: the replicas' statuses
(`Reconciler.statuses`), the full frame (`status_frame`), the partial frame against the
last one sent (`partial_status_frame`), and its JSON. Measured with the agent's memo and
entry cache (an unchanged replica keeps its status and entry) and, in the same run, the
reference: the same frames built from scratch (no memo, no cache). The reconciler runs over
the in-memory engine of hollow nodes. One JSON object on stdout.

    .venv/bin/python benchmarks/agent_status.py [--replicas 20 100] [--frames 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent.protocol import partial_status_frame, status_frame
from agent.reconciler import Reconciler
from agent.replicas import DesiredReplica
from agent.runtime.fake import FakeRuntime
from agent.status import Phase

IMAGE = "berth-test/busybox:1"


def desired(count: int, revision: str = "r1") -> list[DesiredReplica]:
    return [
        DesiredReplica(f"web-{i:05d}", "default", deployment="web", revision=revision, image=IMAGE)
        for i in range(count)
    ]


async def running_node(count: int) -> tuple[Reconciler, asyncio.Task]:
    runtime = FakeRuntime("bench-node")
    reconciler = Reconciler(runtime, "bench-node")
    task = asyncio.create_task(reconciler.run())
    reconciler.apply_desired(1, desired(count))
    while sum(s.phase == Phase.RUNNING for s in reconciler.statuses()) < count:
        await asyncio.sleep(0.005)  # the in-memory engine starts them within a few loop turns
    return reconciler, task


def frame_cost(reconciler: Reconciler, count: int, frames: int, *, cached: bool) -> float:
    """Seconds per frame, one replica changing between frames (its desired entry moves to
    another revision and back, so its status turns not-ready and ready again)."""
    cache: dict | None = {} if cached else None
    memo_before = reconciler._status_memo
    if not cached:
        reconciler._status_memo = None  # describe() from scratch every time: the reference
    current, other = desired(count), desired(count, revision="r2")
    try:
        last = status_frame(reconciler.generation, reconciler.statuses(), cache)
        started = time.perf_counter()
        for i in range(frames):
            index = i % count
            current[index], other[index] = other[index], current[index]
            reconciler.apply_desired(reconciler.generation + 1, current)
            full = status_frame(reconciler.generation, reconciler.statuses(), cache)
            sent = {(e["namespace"], e["name"]): e for e in last["replicas"]}
            json.dumps(partial_status_frame(full, sent), separators=(",", ":"))
            last = full
        return (time.perf_counter() - started) / frames
    finally:
        reconciler._status_memo = memo_before


async def measure(count: int, frames: int) -> dict:
    reconciler, task = await running_node(count)
    try:
        reference = frame_cost(reconciler, count, frames, cached=False)
        memoised = frame_cost(reconciler, count, frames, cached=True)
    finally:
        task.cancel()
    return {
        "replicas": count,
        "frame_us": round(memoised * 1e6, 1),
        "reference_frame_us": round(reference * 1e6, 1),
        "speedup": round(reference / memoised, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--frames", type=int, default=3000)
    args = parser.parse_args()
    results = [asyncio.run(measure(count, args.frames)) for count in args.replicas]
    print(json.dumps({"frames": args.frames, "nodes": results}))


if __name__ == "__main__":
    main()
