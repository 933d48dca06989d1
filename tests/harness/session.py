"""One test session's private directory, and the removal of what dead sessions left behind.

Everything a test session creates carries one recognisable name:

- its directory:           /tmp/berth-test-<tag>/  (PostgreSQL, Redis, engines, logs)
- network namespaces:      berthe2e-<tag>-<host>
- cgroup parents (engines): /berthe2e-<tag>-<host>
- host-side veths:         be2e-<slot>  (the slot is recorded in the session directory)
- routes:                  unreachable 10.250.<slot>.0/24 (so a cut host is really cut off)
- processes:               started with BERTH_HARNESS_ROOT=<directory> in their environment,
                           or with a working directory inside it

A session holds an exclusive flock on <directory>/.lock for as long as it lives; the kernel
drops it when the process dies, however it dies. A directory whose lock can be taken
belongs to a dead session and is swept. Sessions running at the same time (several
developers, or several checkouts on one machine) therefore never touch each other's things.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

PREFIX = "berth-test-"
NETNS_PREFIX = "berthe2e-"
VETH_PREFIX = "be2e-"
MARKER = "BERTH_HARNESS_ROOT"
GLOBAL_LOCK = Path(tempfile.gettempdir()) / "berth-e2e.lock"
# A directory this young without a held lock may be a session still starting up.
_GRACE_SECONDS = 30


class HarnessSession:
    """The private directory of one test session, locked for the session's lifetime."""

    def __init__(self, root: Path, lock_fd: int) -> None:
        self.root = root
        self.tag = root.name.removeprefix(PREFIX)
        self._lock_fd: int | None = lock_fd

    @classmethod
    def create(cls, base: Path | None = None) -> HarnessSession:
        root = Path(tempfile.mkdtemp(prefix=PREFIX, dir=base or tempfile.gettempdir()))
        # PostgreSQL runs as another user and must be able to walk into its subdirectory.
        root.chmod(0o711)
        fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(root, fd)

    @property
    def env(self) -> dict[str, str]:
        """The marker every child process inherits, so leftovers can be found after a crash."""
        return {MARKER: str(self.root)}

    def netns_name(self, host: str) -> str:
        return f"{NETNS_PREFIX}{self.tag}-{host}"

    def close(self, keep_files: bool = False) -> None:
        """Kill whatever still runs from this session and remove its directory."""
        teardown_session_root(self.root, remove_files=not keep_files)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _session_is_live(root: Path) -> bool:
    try:
        fd = os.open(root / ".lock", os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        return True  # another user's session: not ours to judge, nor to sweep
    except FileNotFoundError:
        try:
            return time.time() - root.stat().st_mtime < _GRACE_SECONDS
        except FileNotFoundError:
            return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it
    return False


def live_session_roots(base: Path | None = None) -> list[Path]:
    base = base or Path(tempfile.gettempdir())
    return [root for root in base.glob(f"{PREFIX}*") if root.is_dir() and _session_is_live(root)]


# --- processes ---------------------------------------------------------------------------------


def _ancestors() -> set[int]:
    pids, pid = {os.getpid()}, os.getpid()
    while pid > 1:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                pid = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        pids.add(pid)
    return pids


def _netns_ids(names: Iterable[str]) -> set[tuple[int, int]]:
    ids = set()
    for name in names:
        try:
            st = os.stat(f"/var/run/netns/{name}")
            ids.add((st.st_dev, st.st_ino))
        except OSError:
            pass
    return ids


def processes_of(root: Path | None, netns: Iterable[str] = ()) -> list[int]:
    """Pids of processes that belong to the session in `root` or live in one of the namespaces."""
    root_s = str(root) if root else None
    ns_ids = _netns_ids(netns)
    spare = _ancestors()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in spare:
            continue
        pid = int(entry.name)
        try:
            if root_s and _belongs_to(pid, root_s):
                found.append(pid)
            elif ns_ids:
                st = os.stat(f"/proc/{pid}/ns/net")
                if (st.st_dev, st.st_ino) in ns_ids:
                    found.append(pid)
        except (OSError, ValueError):
            continue  # gone, or not ours to inspect
    return found


def _belongs_to(pid: int, root: str) -> bool:
    cwd = os.readlink(f"/proc/{pid}/cwd")
    if cwd == root or cwd.startswith(root + "/"):
        return True
    with open(f"/proc/{pid}/cmdline", "rb") as handle:
        if (root + "/").encode() in handle.read():
            return True
    with open(f"/proc/{pid}/environ", "rb") as handle:
        return f"{MARKER}={root}\0".encode() in handle.read() + b"\0"


def kill_pids(pids: Iterable[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


# --- cgroups -----------------------------------------------------------------------------------


def _cgroup_mounts() -> list[Path]:
    mounts = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            if right.split(" ", 1)[0] in ("cgroup", "cgroup2"):
                mounts.append(Path(_unescape(left.split()[4])))
    return mounts


def remove_cgroups(name_pattern: str) -> None:
    """Kill every process in the top-level cgroups matching `name_pattern` (a glob), then remove them.

    Engines put their containers under a cgroup parent named after the host, so this
    reaches container processes that outlived their engine and shim.
    """
    for mount in _cgroup_mounts():
        for group in mount.glob(name_pattern):
            for _ in range(50):
                pids = []
                for procs in group.rglob("cgroup.procs"):
                    try:
                        pids += [int(p) for p in procs.read_text().split()]
                    except OSError:
                        pass
                if not pids:
                    break
                kill_pids(pids)
                time.sleep(0.05)
            for directory in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    directory.rmdir()
                except OSError:
                    pass
            try:
                group.rmdir()
            except OSError:
                pass


# --- mounts ------------------------------------------------------------------------------------


def _unescape(path: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


_MNT_DETACH = 2


def unmount_under(root: Path) -> None:
    """Lazily unmount everything mounted at or below `root` (engine overlays, netns binds), deepest first."""
    prefix = str(root).rstrip("/") + "/"
    with open("/proc/self/mountinfo") as handle:
        points = [_unescape(line.split()[4]) for line in handle]
    points = [p for p in points if p.startswith(prefix) or p == prefix.rstrip("/")]
    if not points:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for point in sorted(set(points), key=len, reverse=True):
        libc.umount2(point.encode(), _MNT_DETACH)


# --- network -----------------------------------------------------------------------------------


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError:
        if check:
            raise RuntimeError("the `ip` command is missing: run `make deps` (package iproute2)") from None
        return subprocess.CompletedProcess(["ip", *args], 127, "", "ip: not installed")
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result


def list_netns(prefix: str = NETNS_PREFIX) -> list[str]:
    try:
        return sorted(name for name in os.listdir("/var/run/netns") if name.startswith(prefix))
    except FileNotFoundError:
        return []


def list_links(prefix: str = VETH_PREFIX) -> list[str]:
    out = ip("-o", "link", "show", check=False).stdout
    names = [line.split(":", 2)[1].strip().split("@", 1)[0] for line in out.splitlines() if ":" in line]
    return [name for name in names if name.startswith(prefix)]


def delete_netns(name: str) -> None:
    kill_pids(processes_of(None, netns=[name]))
    ip("netns", "delete", name, check=False)


def delete_link(name: str) -> None:
    ip("link", "delete", name, check=False)


def slot_blackhole(slot: int) -> str:
    """The route that makes a cut host unreachable.

    While the veth is up, its connected /30 is the more specific route. Once it is down,
    this /24 answers "unreachable" at once, instead of the default route carrying the
    packets off the machine (where a transparent proxy may even answer them).
    """
    return f"10.250.{slot}.0/24"


def unreachable_slots() -> set[int]:
    out = ip("-o", "-4", "route", "show", "type", "unreachable", check=False).stdout
    return {int(m.group(1)) for m in re.finditer(r"unreachable 10\.250\.(\d+)\.0/24", out)}


def delete_slot_network(slot: int) -> None:
    delete_link(f"{VETH_PREFIX}{slot}")
    ip("route", "delete", "unreachable", slot_blackhole(slot), check=False)


def claimed_slots(roots: Iterable[Path]) -> set[int]:
    slots = set()
    for root in roots:
        for slot_file in root.glob("hosts/*/slot"):
            try:
                slots.add(int(slot_file.read_text()))
            except (OSError, ValueError):
                pass
    return slots


class GlobalLock:
    """Serialises slot allocation and sweeping between concurrent sessions."""

    def __enter__(self) -> GlobalLock:
        self._fd = os.open(GLOBAL_LOCK, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


# --- teardown ----------------------------------------------------------------------------------


def teardown_session_root(root: Path, remove_files: bool = True) -> None:
    """Remove every trace of the session in `root`: processes, containers, namespaces, mounts, files."""
    tag = root.name.removeprefix(PREFIX)
    root_user = os.geteuid() == 0
    netns = list_netns(f"{NETNS_PREFIX}{tag}-") if root_user else []
    slots = claimed_slots([root])
    for _ in range(3):  # killed parents can spawn nothing, but a dying engine may still be reaping
        pids = processes_of(root, netns)
        if not pids:
            break
        kill_pids(pids)
        time.sleep(0.1)
    if root_user:
        remove_cgroups(f"{NETNS_PREFIX}{tag}-*")
        for name in netns:
            ip("netns", "delete", name, check=False)
        for slot in slots:
            delete_slot_network(slot)
        unmount_under(root)
    if remove_files:
        shutil.rmtree(root, ignore_errors=True)


def sweep_stale_sessions(base: Path | None = None) -> list[str]:
    """Remove what killed earlier sessions left behind; returns a line per thing removed."""
    base = base or Path(tempfile.gettempdir())
    removed = []
    with GlobalLock():
        live = []
        for root in sorted(base.glob(f"{PREFIX}*")):
            if not root.is_dir():
                continue
            if _session_is_live(root):
                live.append(root)
                continue
            teardown_session_root(root)
            removed.append(str(root))
        if os.geteuid() != 0:
            return removed
        live_tags = {root.name.removeprefix(PREFIX) for root in live}
        # Namespaces, cgroups and veths whose session directory is already gone.
        # (Tags never contain "-": mkdtemp draws from [a-z0-9_].)
        for name in list_netns():
            if name.removeprefix(NETNS_PREFIX).split("-", 1)[0] not in live_tags:
                delete_netns(name)
                removed.append(f"netns {name}")
        groups = {group.name for mount in _cgroup_mounts() for group in mount.glob(f"{NETNS_PREFIX}*")}
        for name in sorted(groups):
            if name.removeprefix(NETNS_PREFIX).split("-", 1)[0] not in live_tags:
                remove_cgroups(name)
                removed.append(f"cgroup {name}")
        slots = claimed_slots(live)
        for link in list_links():
            suffix = link.removeprefix(VETH_PREFIX)
            if suffix.isdigit() and int(suffix) not in slots:
                delete_link(link)
                removed.append(f"link {link}")
        for slot in unreachable_slots() - slots:
            delete_slot_network(slot)
            removed.append(f"route {slot_blackhole(slot)}")
    return removed
