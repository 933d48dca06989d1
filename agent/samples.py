"""What the metrics sampler reads from a runtime, and how raw counters become figures. Pure.

Counters (bytes moved, CPU time used) only grow; the sampler turns two readings into a
CPU percentage, and the control plane turns byte counters into rates. A counter that goes
backwards (a restarted container) starts a new series rather than a negative rate.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass(frozen=True)
class ContainerSample:
    cpu_total_ns: int  # CPU time the container used, all cores
    system_total_ns: int  # CPU time the whole host used (the engine's system_cpu_usage)
    online_cpus: int
    memory_bytes: int  # usage minus page cache, as `docker stats` shows
    memory_limit: int
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int


@dataclass(frozen=True)
class NodeSample:
    cpu_busy: int  # /proc/stat jiffies, all cores
    cpu_total: int
    memory_bytes: int  # MemTotal - MemAvailable
    memory_total: int
    net_rx_bytes: int
    net_tx_bytes: int
    block_read_bytes: int
    block_write_bytes: int


class ExecHandle(ABC):
    """A command running in a container with a TTY."""

    @abstractmethod
    async def write(self, data: bytes) -> None: ...

    @abstractmethod
    async def resize(self, cols: int, rows: int) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Hang up (the process gets SIGHUP from its TTY); safe to call twice."""


def container_cpu_percent(previous: ContainerSample | None, current: ContainerSample) -> float | None:
    """CPU use between two readings in percent of one core (200 = two cores busy), as `docker stats`."""
    if previous is None:
        return None
    used = current.cpu_total_ns - previous.cpu_total_ns
    elapsed = current.system_total_ns - previous.system_total_ns
    if used < 0 or elapsed <= 0:
        return None
    return round(used / elapsed * max(current.online_cpus, 1) * 100.0, 2)


def node_cpu_percent(previous: NodeSample | None, current: NodeSample) -> float | None:
    """Share of the whole server's CPU time that was busy between two readings, 0-100."""
    if previous is None:
        return None
    busy = current.cpu_busy - previous.cpu_busy
    total = current.cpu_total - previous.cpu_total
    if busy < 0 or total <= 0:
        return None
    return round(busy / total * 100.0, 2)


def container_sample_from_stats(stats: dict) -> ContainerSample:
    """A ContainerSample from the engine's `stats` answer (cgroup v1 or v2)."""
    cpu = stats.get("cpu_stats") or {}
    usage = cpu.get("cpu_usage") or {}
    memory = stats.get("memory_stats") or {}
    detail = memory.get("stats") or {}
    cache = detail.get("inactive_file", detail.get("total_inactive_file", detail.get("cache", 0))) or 0
    networks = (stats.get("networks") or {}).values()
    read = write = 0
    for entry in (stats.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []:
        op = str(entry.get("op", "")).lower()
        if op == "read":
            read += int(entry.get("value") or 0)
        elif op == "write":
            write += int(entry.get("value") or 0)
    online = cpu.get("online_cpus") or len(usage.get("percpu_usage") or ()) or 1
    return ContainerSample(
        cpu_total_ns=int(usage.get("total_usage") or 0),
        system_total_ns=int(cpu.get("system_cpu_usage") or 0),
        online_cpus=int(online),
        memory_bytes=max(int(memory.get("usage") or 0) - int(cache), 0),
        memory_limit=int(memory.get("limit") or 0),
        net_rx_bytes=sum(int(n.get("rx_bytes") or 0) for n in networks),
        net_tx_bytes=sum(int(n.get("tx_bytes") or 0) for n in networks),
        block_read_bytes=read,
        block_write_bytes=write,
    )


def parse_proc_stat(text: str) -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat's first line."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            values = [int(v) for v in line.split()[1:]]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total = sum(values[:8])  # guest time is already counted in user
            return total - idle, total
    raise ValueError("/proc/stat has no cpu line")


def parse_meminfo(text: str) -> tuple[int, int]:
    """(used, total) bytes from /proc/meminfo: used = MemTotal - MemAvailable."""
    fields = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            fields[name] = int(parts[0]) * 1024
    total = fields.get("MemTotal", 0)
    return total - fields.get("MemAvailable", fields.get("MemFree", 0)), total


def parse_net_dev(text: str) -> tuple[int, int]:
    """(rx, tx) bytes over every interface but loopback, from /proc/net/dev."""
    rx = tx = 0
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        values = rest.split()
        if name.strip() == "lo" or len(values) < 9:
            continue
        rx += int(values[0])
        tx += int(values[8])
    return rx, tx


def parse_diskstats(text: str) -> tuple[int, int]:
    """(read, written) bytes of whole disks from /proc/diskstats (sectors are 512 bytes)."""
    read = written = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 10:
            continue
        name = parts[2]
        # Partitions and virtual devices would count the same I/O twice.
        if name.startswith(("loop", "ram", "dm-", "md", "zram")) or (
            name[-1].isdigit() and not name.startswith("nvme")
        ):
            continue
        if name.startswith("nvme") and "p" in name.removeprefix("nvme"):
            continue
        read += int(parts[5]) * 512
        written += int(parts[9]) * 512
    return read, written
