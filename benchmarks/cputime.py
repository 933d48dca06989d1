"""CPU time of process trees, read from /proc: where a benchmark's CPU went.

`cpu_seconds(pid)` is one tree's total so far; `CpuMeter` measures a window for several named
groups of processes, counting each process once, including processes born or gone within the
window, and puts the rest of the machine's busy time under `other`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

TICK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status, in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pids(root: int) -> list[int]:
    """A process and its live descendants."""
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except OSError:
            continue
    return pids


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (None if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _ticks(fields: list[str]) -> int:
    return sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime


def process_ticks(pid: int) -> int | None:
    """utime + stime of a process and of its reaped children, in clock ticks (None if gone)."""
    fields = _stat(pid)
    return None if fields is None else _ticks(fields)


def cpu_seconds(root: int | None) -> float:
    """CPU time used by a process, its live descendants and its reaped children."""
    if root is None:
        return 0.0
    return sum(process_ticks(pid) or 0 for pid in tree_pids(root)) / TICK


def busy_seconds() -> float:
    """CPU time the whole machine has spent on anything but idle (all cores), from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / TICK  # guest time is already in user


def steal_seconds() -> float:
    """CPU time the hypervisor gave other guests while this machine's cores wanted it (all
    cores), from /proc/stat: a virtual machine's slow phases, when it reports them."""
    with open("/proc/stat") as stat:
        values = stat.readline().split()[1:]
    return int(values[7]) / TICK if len(values) > 7 else 0.0


def processes_matching(*needles: str) -> list[int]:
    """Pids whose command line contains every one of `needles` (e.g. the shims of one engine,
    which are not children of anything the benchmark started)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                text = cmdline.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in text for n in needles):
            found.append(int(entry))
    return found


class CpuMeter:
    """CPU seconds per named group over windows between `start()` and `stop()`.

    `groups` maps a name to a function returning the group's root pids now; each root counts
    with its descendants. A process is counted in the first group that reaches it. A process
    that ends inside a window is counted through its parent when a measured parent reaped
    it (the parent's children's time then holds its whole life, so what it had used before
    the window is taken off); otherwise its last ticks are lost. One born inside counts from
    zero. `other` is the machine's busy time that no group accounts for.
    """

    def __init__(self, groups: dict[str, Callable[[], Iterable[int]]]) -> None:
        self.groups = groups
        self.totals: dict[str, float] = dict.fromkeys([*groups, "other"], 0.0)
        self.busy = 0.0
        self._start: dict[int, tuple[str, int, int]] = {}
        self._busy_start = 0.0

    def _snapshot(self) -> dict[int, tuple[str, int, int]]:
        """{pid: (group, ticks, parent pid)} of every measured process now."""
        seen: dict[int, tuple[str, int, int]] = {}
        for name, roots in self.groups.items():
            for root in roots():
                for pid in tree_pids(root):
                    if pid in seen:
                        continue
                    fields = _stat(pid)
                    if fields is not None:
                        seen[pid] = (name, _ticks(fields), int(fields[1]))
        return seen

    def start(self) -> None:
        self._busy_start = busy_seconds()
        self._start = self._snapshot()

    def stop(self) -> None:
        end = self._snapshot()
        busy = busy_seconds() - self._busy_start
        accounted = 0.0
        for pid, (name, ticks, _) in end.items():
            before = self._start.get(pid, (name, 0, 0))[1]
            seconds = max(ticks - before, 0) / TICK
            self.totals[name] += seconds
            accounted += seconds
        for pid, (_, ticks, parent) in self._start.items():
            if pid not in end and parent in end:  # reaped by a measured parent: counted twice
                name = end[parent][0]
                seconds = min(ticks / TICK, self.totals[name])
                self.totals[name] -= seconds
                accounted -= seconds
        self.totals["other"] += max(busy - accounted, 0.0)
        self.busy += busy

    def result(self) -> dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.totals.items()}


def _tcp_sockets() -> dict[int, tuple[int, int]]:
    """Every TCP socket of the machine: inode -> (local port, remote port)."""
    sockets = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows)
                for row in rows:
                    fields = row.split()
                    local, remote, inode = fields[1], fields[2], int(fields[9])
                    sockets[inode] = (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return sockets


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def connections_per_server(port: int, candidates: list[int], client_pid: int | None = None) -> dict:
    """How the connections to `port` spread over the server processes among `candidates`
    (those holding the listening socket): {"all": [n, ...], "client": [n, ...]}, in the
    order of those processes, "client" counting only the connections from `client_pid`."""
    sockets = _tcp_sockets()
    clients: set[int] = set()
    if client_pid is not None:
        mine = [sockets[i] for i in _socket_inodes(client_pid) if i in sockets]
        clients = {local for local, remote in mine if remote == port}
    spread: dict = {"all": [], "client": []}
    for pid in candidates:
        ends = [sockets[i] for i in _socket_inodes(pid) if i in sockets]
        if (port, 0) not in ends:
            continue  # not a server process (uvicorn's supervisor, a resource tracker)
        accepted = [remote for local, remote in ends if local == port and remote]
        spread["all"].append(len(accepted))
        spread["client"].append(sum(1 for remote in accepted if remote in clients))
    return spread
