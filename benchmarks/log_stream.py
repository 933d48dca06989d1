"""Log streaming: latency and throughput from a container's stdout to WebSocket viewers.

Starts what it needs itself (private PostgreSQL and Redis, the control plane: uvicorn,
Celery worker and beat; one host: a network namespace with its own Docker engine and
agent), as the e2e tests do. Needs root. One replica runs a script that waits for a
signal file before each phase (the benchmark `docker exec`s `touch`), so every viewer is
subscribed before the lines are written:

- latency: 400 lines, one every 10 ms; latency = received by the viewer - the engine's
  timestamp of the line (taken when the container wrote it; same clock);
- one viewer: a burst of N lines (`seq`) as fast as the container can write them;
- 50 viewers: the same burst, 50 viewers subscribed at once (lines/s summed over viewers);
- `docker logs -f` on the same engine, the same burst (the reference).

Progress on stderr; one JSON object on stdout.

    sudo .venv/bin/python benchmarks/log_stream.py [--lines 100000] [--viewers 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime

import websockets
from realhosts import percentile, real_cluster

from tests.harness.waiting import wait_for

IMAGE = "berth-test/busybox:1"
LATENCY_LINES = 400


def log(message: str) -> None:
    print(f"[log_stream] {message}", file=sys.stderr, flush=True)


def script(lines: int) -> list[str]:
    wait = "while [ ! -e /tmp/{0} ]; do sleep 0.02; done"
    return [
        "sh",
        "-c",
        "trap 'exit 0' TERM; "
        + wait.format("go0")
        + f"; i=0; while [ $i -lt {LATENCY_LINES} ]; do i=$((i+1)); echo lat-$i; sleep 0.01; done; "
        + "; ".join(
            f"{wait.format(f'go{n}')}; awk 'BEGIN {{ for (i = 1; i <= {lines}; i++) print \"burst{n}-\" i }}'"
            for n in (1, 2, 3)
        )
        + "; sleep 3600 & wait",
    ]


def engine_time(stamp: str) -> float:
    head, _, fraction = stamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (fraction or "0"))


class Viewer:
    def __init__(self, url: str, origin: str, token: str, prefix: str) -> None:
        self.url, self.origin, self.token, self.prefix = url, origin, token, prefix
        self.count = 0
        self.dropped = 0
        self.latencies: list[float] = []
        self.first = self.last = 0.0
        self.ready = asyncio.Event()

    async def run(self, want: int, timeout: float) -> None:
        async with websockets.connect(self.url, origin=self.origin, max_size=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "tail": 0, "token": self.token}))
            deadline = time.monotonic() + timeout
            while self.count + self.dropped < want and time.monotonic() < deadline:
                try:
                    raw = await asyncio.wait_for(ws.recv(), timeout=max(deadline - time.monotonic(), 0.01))
                except TimeoutError:
                    break
                now = time.time()
                message = json.loads(raw)
                if message["type"] == "subscribed":
                    self.ready.set()
                if message["type"] != "lines":
                    continue
                for _replica, stamp, stream, text in message["lines"]:
                    if stream == "dropped":
                        self.dropped += text
                    elif text.startswith(self.prefix):
                        if not self.count:
                            self.first = now
                        self.count += 1
                        self.last = now
                        if self.prefix == "lat-":
                            self.latencies.append(now - engine_time(stamp))


async def phase(url, origin, token, prefix, viewers, want, trigger, timeout=120.0) -> list[Viewer]:
    group = [Viewer(url, origin, token, prefix) for _ in range(viewers)]
    tasks = [asyncio.create_task(v.run(want, timeout)) for v in group]
    await asyncio.wait_for(asyncio.gather(*(v.ready.wait() for v in group)), 30)
    await asyncio.sleep(1.0)  # the agents' log streams open after `subscribed`; let them settle
    started = time.time()
    trigger()
    await asyncio.gather(*tasks)
    for v in group:
        v.first = v.first or started
    return group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--viewers", type=int, default=50)
    args = parser.parse_args()

    with real_cluster(["h1"], log=log) as (plane, (host,)):
        name = f"bench-{uuid.uuid4().hex[:6]}"
        body = {"name": name, "image": IMAGE, "replicas": 1, "command": script(args.lines)}
        plane.api.post("/api/v1/namespaces/default/deployments/", json=body).raise_for_status()

        def running():
            items = plane.api.get(f"/api/v1/namespaces/default/deployments/{name}/replicas/").json()[
                "results"
            ]
            return items[0] if items and items[0]["phase"] == "Running" and items[0]["container_id"] else None

        replica = wait_for(running, 30, "the writer Running")
        container = replica["container_id"]
        docker = ["docker", "-H", host.docker_url]

        def touch(flag):
            return lambda: subprocess.run([*docker, "exec", container, "touch", f"/tmp/{flag}"], check=True)

        url = (
            plane.base_url.replace("http://", "ws://")
            + f"/ws/namespaces/default/replicas/{replica['name']}/logs/"
        )
        token = plane.api_token

        log(f"latency: {LATENCY_LINES} lines, one every 10 ms")
        (lat,) = asyncio.run(phase(url, plane.base_url, token, "lat-", 1, LATENCY_LINES, touch("go0")))
        log(f"one viewer: a burst of {args.lines} lines")
        (one,) = asyncio.run(phase(url, plane.base_url, token, "burst1-", 1, args.lines, touch("go1")))
        log(f"{args.viewers} viewers: a burst of {args.lines} lines")
        many = asyncio.run(
            phase(url, plane.base_url, token, "burst2-", args.viewers, args.lines, touch("go2"))
        )

        log("docker logs -f: the same burst")
        follower = subprocess.Popen(
            [*docker, "logs", "-f", "--tail", "0", container],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # docker logs attaches (the same settling time the viewers got)
        started = time.time()
        touch("go3")()
        seen = 0
        assert follower.stdout is not None
        timer = threading.Timer(120, follower.kill)  # a bounded wait, like the viewers'
        timer.start()
        for line in follower.stdout:
            if line.startswith(b"burst3-"):
                seen += 1
                if seen == args.lines:
                    break
        docker_elapsed = time.time() - started
        timer.cancel()
        follower.kill()

        ms = lambda s: round(s * 1000, 1)  # noqa: E731
        many_elapsed = max(v.last for v in many) - min(v.first for v in many)
        result = {
            "latency_p50_ms": ms(statistics.median(lat.latencies)),
            "latency_p99_ms": ms(percentile(lat.latencies, 0.99)),
            "latency_lines": len(lat.latencies),
            "lines_per_s_one_viewer": round(one.count / max(one.last - one.first, 1e-6)),
            # lost: neither received nor reported as dropped; dropped: shown to the viewer as
            # "[… N lines dropped]" because it did not keep up (by design, nobody else waits).
            "lost_lines": args.lines - one.count - one.dropped,
            "dropped_marked_one_viewer": one.dropped,
            "lines_per_s_50_viewers": round(sum(v.count for v in many) / max(many_elapsed, 1e-6)),
            "lost_lines_50_viewers": sum(args.lines - v.count - v.dropped for v in many),
            "dropped_marked_50_viewers": sum(v.dropped for v in many),
            "complete_viewers": sum(v.count == args.lines for v in many),
            "viewers": args.viewers,
            "docker_logs_lines_per_s": round(seen / max(docker_elapsed, 1e-6)),
            "burst_lines": args.lines,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
