"""The metrics sampler: every few seconds, the server's and each running replica's counters.

Reads: the runtime's counters (engine stats, /proc), the reconciler's running replicas.
Writes: one `metrics` frame per interval through `send` (docs/agent-protocol.md, section 4).
CPU percentages come from two consecutive readings, so the first frame after a start
has `cpu_percent: null`. A runtime without counters (hollow nodes) sends nothing at all.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from agent.runtime import Runtime
from agent.samples import ContainerSample, NodeSample, container_cpu_percent, node_cpu_percent
from agent.status import Phase, ReplicaStatus

METRICS_INTERVAL = 5.0


class MetricsSampler:
    def __init__(
        self,
        runtime: Runtime,
        statuses: Callable[[], list[ReplicaStatus]],
        *,
        interval: float = METRICS_INTERVAL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runtime = runtime
        self._statuses = statuses
        self.interval = interval
        self._clock = clock
        self._node: NodeSample | None = None
        self._containers: dict[str, ContainerSample] = {}

    async def sample(self) -> dict[str, Any] | None:
        """One `metrics` frame, or None when the runtime has no counters."""
        if not isinstance(self._runtime, Runtime):  # a bare stand-in in tests: nothing to measure
            return None
        node = await self._runtime.node_sample()
        if node is None:
            return None
        running = [s for s in self._statuses() if s.phase == Phase.RUNNING and s.container_id]
        samples = await self._runtime.container_samples([s.container_id for s in running])
        frame = {
            "type": "metrics",
            "time": round(self._clock(), 3),
            "interval": self.interval,
            "node": {
                "cpu_percent": node_cpu_percent(self._node, node),
                "memory_bytes": node.memory_bytes,
                "memory_total": node.memory_total,
                "net_rx_bytes": node.net_rx_bytes,
                "net_tx_bytes": node.net_tx_bytes,
                "block_read_bytes": node.block_read_bytes,
                "block_write_bytes": node.block_write_bytes,
            },
            "containers": [],
        }
        for status in running:
            sample = samples.get(status.container_id)
            if sample is None:
                continue
            frame["containers"].append(
                {
                    "namespace": status.namespace,
                    "replica": status.name,
                    "cpu_percent": container_cpu_percent(self._containers.get(status.container_id), sample),
                    "memory_bytes": sample.memory_bytes,
                    "memory_limit": sample.memory_limit,
                    "net_rx_bytes": sample.net_rx_bytes,
                    "net_tx_bytes": sample.net_tx_bytes,
                    "block_read_bytes": sample.block_read_bytes,
                    "block_write_bytes": sample.block_write_bytes,
                }
            )
        self._node = node
        self._containers = samples
        return frame

    async def run(self, send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Sample and send forever (cancelled when the connection ends)."""
        while True:
            started = time.monotonic()
            frame = await self.sample()
            if frame is None:
                return  # nothing to measure here, ever
            await send(frame)
            await asyncio.sleep(max(self.interval - (time.monotonic() - started), 0.5))
