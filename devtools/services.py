"""Private PostgreSQL, Redis and Docker engine processes, shared by `make run` and the tests.

Each class starts one process in directories it is given, waits until it answers, hands
out connection URLs and stops it again. Nothing here touches a system-wide service: the
only shared thing is the host's Docker engine, which `ensure_docker_engine` uses when one
already answers and starts (as root) only when none does.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

MAKE_DEPS_HINT = "run `make deps` (as root it installs the Debian packages)"


class ServiceError(RuntimeError):
    """A private service could not be started or stopped; the message says what to do."""


# --- process helpers ---------------------------------------------------------------------------


def is_root() -> bool:
    return os.geteuid() == 0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (callers retry if they lose the race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes the kernel send `sig` to the child when its parent dies.

    Children also get start_new_session=True, so the terminal's Ctrl-C reaches only the
    parent, which then stops them in order (Redis must outlive the Celery worker); this
    makes sure that a parent killed outright does not leave servers behind. The
    signal fires when the *thread* that forked the child ends, so it is only armed for
    children started from the main thread (returns None elsewhere).
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child

    def _arm() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))

    return _arm


def pid_alive(pid: int) -> bool:
    """True if `pid` is a live process (zombies count as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    except PermissionError:
        return True
    return state not in ("Z", "X")


def tail(path: Path | str | None, lines: int = 40) -> str:
    """The last `lines` lines of a log file, or a note that there is none."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return f"({path} does not exist)"
    chosen = text.splitlines()[-lines:]
    return "\n".join(chosen) if chosen else f"({path} is empty)"


def stop_process(
    proc: subprocess.Popen | int | None, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> int | None:
    """Send `sig`, wait up to `timeout`, then SIGKILL. Returns the exit code if known."""
    if proc is None:
        return None
    if isinstance(proc, int):
        pid = proc
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return None
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)
    except ProcessLookupError:
        return proc.wait(10)


def wait_until(
    check: Callable[[], object],
    timeout: float,
    what: str,
    *,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.05,
) -> object:
    """Poll `check` until it returns something truthy; fail early if `proc` exits.

    The error names what was awaited and shows the end of `log`, which is where the
    reason almost always is.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except Exception as exc:
            result, last_error = None, exc
        if result:
            return result
        if proc is not None and proc.poll() is not None:
            raise ServiceError(
                f"{what}: the process exited with code {proc.returncode}.\n"
                f"--- last lines of {log} ---\n{tail(log)}"
            )
        if time.monotonic() >= deadline:
            seen = f" (last error: {last_error})" if last_error else ""
            raise ServiceError(
                f"{what}: not ready after {timeout:.0f}s{seen}.\n--- last lines of {log} ---\n{tail(log)}"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


def spawn_logged(cmd: list[str], log_path: Path, stop_signal: int, **popen) -> subprocess.Popen:
    """Start a server process in its own session, its output appended to `log_path`; the
    kernel sends it `stop_signal` if we die first, so a killed parent leaves nothing behind."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child has its own copy of the descriptor
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(stop_signal),
            **popen,
        )


# --- PostgreSQL --------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """The directory holding initdb and postgres (Debian keeps them off PATH)."""
    override = os.environ.get("BERTH_PG_BINDIR")
    candidates: list[Path] = []
    if override:
        candidates.append(Path(override))

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    on_path = shutil.which("postgres")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "postgres").exists() and (candidate / "initdb").exists():
            return candidate
    raise ServiceError(
        "PostgreSQL server binaries (initdb, postgres) were not found under "
        f"/usr/lib/postgresql/*/bin: {MAKE_DEPS_HINT} (package postgresql), "
        "or point BERTH_PG_BINDIR at them."
    )


def _check_traversable(path: Path, user: str) -> None:
    """PostgreSQL runs as `user`; every parent of its directories must let it through."""
    import pwd

    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        if not parent.exists():
            continue
        st = parent.stat()
        if st.st_uid == entry.pw_uid:
            continue
        if st.st_mode & 0o001 or (st.st_gid == entry.pw_gid and st.st_mode & 0o010):
            continue
        raise ServiceError(
            f"PostgreSQL runs as user {user!r} (it refuses to run as root) and cannot enter {parent} "
            f"(mode {oct(st.st_mode & 0o777)}). Allow it with `chmod o+x {parent}`, or keep the data "
            "somewhere else (BERTH_DATA_DIR)."
        )


class PostgresServer:
    """A private PostgreSQL cluster: initdb on first use, `postgres` as a child process.

    As root the server runs as the `postgres` user (PostgreSQL refuses root) and owns its
    directories. Clients connect over the unix socket in `socket_dir`, and over TCP on
    127.0.0.1:`port` when `listen_tcp` is set. Authentication is `trust`: the socket
    directory is private (mode 0700) and the TCP listener only exists in tests.
    """

    def __init__(
        self,
        data_dir: Path,
        socket_dir: Path,
        log_path: Path,
        *,
        port: int = 5432,
        listen_tcp: bool = False,
        for_tests: bool = False,
        settings: Sequence[str] = (),
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.socket_dir = Path(socket_dir).absolute()
        self.log_path = Path(log_path).absolute()
        self.port = port
        self.listen_tcp = listen_tcp
        self.for_tests = for_tests
        self.settings = tuple(settings)  # more `name=value` server settings (-c)
        self.proc: subprocess.Popen | None = None
        self.run_as = "postgres" if is_root() else None

    # -- lifecycle

    def _popen_user(self) -> dict:
        if not self.run_as:
            return {}
        return {"user": self.run_as, "group": self.run_as, "extra_groups": []}

    def _own(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            shutil.chown(path, self.run_as, self.run_as)
        path.chmod(mode)

    def initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        bindir = postgres_bindir()
        if self.run_as:
            _check_traversable(self.data_dir.parent, self.run_as)
        self._own(self.data_dir, 0o700)
        cmd = [
            str(bindir / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]  # fmt: skip
        if self.for_tests:
            cmd.append("--no-sync")
        result = subprocess.run(
            cmd, capture_output=True, text=True, cwd=self.data_dir, check=False, **self._popen_user()
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed in {self.data_dir}:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 60.0) -> PostgresServer:
        self.initdb()
        bindir = postgres_bindir()
        pidfile = self.data_dir / "postmaster.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0] or 0)
            if pid and pid_alive(pid) and b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes():
                raise ServiceError(
                    f"A PostgreSQL server (pid {pid}) is already running on {self.data_dir}: is another "
                    f"`make run` using this directory? Stop it first (kill -INT {pid})."
                )
        self._own(self.socket_dir, 0o700)
        cmd = [
            str(bindir / "postgres"),
            "-D", str(self.data_dir),
            "-k", str(self.socket_dir),
            "-p", str(self.port),
            "-c", f"listen_addresses={'127.0.0.1' if self.listen_tcp else ''}",
            "-c", "max_connections=300",
        ]  # fmt: skip
        if self.for_tests:
            # Durability is worthless for a throwaway cluster; speed is not.
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        for setting in self.settings:
            cmd += ["-c", setting]
        # SIGINT is PostgreSQL's "fast shutdown".
        self.proc = spawn_logged(cmd, self.log_path, signal.SIGINT, cwd=self.data_dir, **self._popen_user())
        wait_until(self._accepting, timeout, "PostgreSQL", proc=self.proc, log=self.log_path)
        return self

    def _accepting(self) -> bool:
        with self.connect():
            return True

    def stop(self, timeout: float = 30.0, *, immediate: bool = False) -> None:
        """Fast shutdown: disconnect clients, roll back, stop. `immediate` (SIGQUIT) stops
        without a checkpoint, as after a crash: the next start replays the WAL."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGQUIT if immediate else signal.SIGINT, timeout)
            self.proc = None

    def restart(self, timeout: float = 60.0, *, immediate: bool = False) -> PostgresServer:
        """Stop and start again on the same port and directories (every client is disconnected)."""
        self.stop(immediate=immediate)
        return self.start(timeout)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- clients

    def connect(self, dbname: str = "postgres"):
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname,
            autocommit=True, connect_timeout=3,
        )  # fmt: skip

    def url(self, dbname: str) -> str:
        if self.listen_tcp:
            return f"postgres://postgres@127.0.0.1:{self.port}/{dbname}"
        port = "" if self.port == 5432 else f"&port={self.port}"
        return f"postgres://postgres@/{dbname}?host={self.socket_dir}{port}"

    def create_database(self, name: str) -> None:
        """Create database `name` unless it exists."""
        from psycopg import sql

        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# --- Redis -------------------------------------------------------------------------------------


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if not found:
        raise ServiceError(f"redis-server is not installed: {MAKE_DEPS_HINT} (package redis-server).")
    return found


class RedisServer:
    """A private redis-server on 127.0.0.1:`port`, no persistence (Berth keeps nothing durable there)."""

    def __init__(self, work_dir: Path, log_path: Path, *, port: int) -> None:
        self.work_dir = Path(work_dir).absolute()
        self.log_path = Path(log_path).absolute()
        self.port = port
        self.pidfile = self.work_dir / "redis.pid"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> RedisServer:
        binary = redis_server_binary()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.work_dir),
            "--pidfile", str(self.pidfile),
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip
        self.proc = spawn_logged(cmd, self.log_path, signal.SIGTERM, cwd=self.work_dir)
        wait_until(self.ping, timeout, f"Redis on port {self.port}", proc=self.proc, log=self.log_path)
        return self

    def ping(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig, timeout)
            self.proc = None

    def restart(self, timeout: float = 30.0, sig: int = signal.SIGKILL) -> RedisServer:
        """Stop (killed outright by default) and start again on the same port. Nothing is
        persisted (see start), so the new server is empty: every key, queue and group is gone."""
        self.stop(sig=sig)
        return self.start(timeout)

    def command(self, *args: str) -> bytes:
        """Send one inline command (e.g. "FLUSHALL") and return the raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return sock.recv(4096)


# --- Docker ------------------------------------------------------------------------------------


def docker_ping(socket_path: Path | str, timeout: float = 2.0) -> bool:
    """True if a Docker engine answers GET /_ping on this unix socket."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(socket_path))
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = sock.recv(256)
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


_PACKAGE_OF = {"nsenter": "util-linux", "ip": "iproute2", "containerd": "containerd"}


def _need_binary(name: str) -> str:
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in ("/usr/sbin", "/usr/bin", "/sbin") if Path(f"{d}/{name}").exists()), None
    )
    if not found:
        package = _PACKAGE_OF.get(name, "docker.io")
        raise ServiceError(f"{name} is not installed: {MAKE_DEPS_HINT} (package {package}).")
    return found


class DockerEngine:
    """A dockerd with its own socket, data root, exec root and pid file.

    With `netns` set, the engine (and its own containerd, so that container shims live in
    the same namespace) runs inside that network namespace through `nsenter --net=...`.
    `ip netns exec` would remount /sys and hide the cgroup mounts ("Devices cgroup isn't
    mounted"). Inside its namespace the engine keeps its default bridge and iptables, so
    published ports answer on the namespace's address.
    """

    def __init__(
        self,
        *,
        socket_path: Path,
        data_root: Path,
        exec_root: Path,
        pidfile: Path,
        log_dir: Path,
        netns: str | None = None,
        cgroup_parent: str | None = None,
        own_containerd: bool = False,
        config_file: Path | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.socket_path = Path(socket_path)
        self.data_root = Path(data_root)
        self.exec_root = Path(exec_root)
        self.pidfile = Path(pidfile)
        self.log_dir = Path(log_dir)
        self.netns = netns
        self.cgroup_parent = cgroup_parent
        self.own_containerd = own_containerd
        self.config_file = config_file
        self.extra_args = list(extra_args)
        self.env = env
        self.dockerd: subprocess.Popen | None = None
        self.containerd: subprocess.Popen | None = None
        self._dockerd_argv: list[str] = []

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / "dockerd.log"

    @property
    def containerd_socket(self) -> Path:
        return self.exec_root / "containerd.sock"

    def _wrap(self, argv: list[str]) -> list[str]:
        if self.netns:
            return [_need_binary("nsenter"), f"--net=/var/run/netns/{self.netns}", "--", *argv]
        return argv

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        return spawn_logged(
            self._wrap(argv), self.log_dir / log_name, signal.SIGTERM, cwd=self.log_dir, env=self.env
        )

    def spawn(self) -> None:
        """Start the processes without waiting (so several engines can boot side by side).

        Idempotent: a running dockerd or containerd is left alone, so this also restarts an
        engine whose dockerd was killed while its containerd (and the containers) lived on.
        """
        dockerd = _need_binary("dockerd")
        for path in (self.data_root, self.exec_root, self.log_dir, self.socket_path.parent):
            path.mkdir(parents=True, exist_ok=True)
        if self.own_containerd and (self.containerd is None or self.containerd.poll() is not None):
            config = self.exec_root.parent / "containerd.toml"
            config.write_text(
                "version = 2\n"
                f'root = "{self.data_root / "containerd"}"\n'
                f'state = "{self.exec_root / "containerd"}"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                "[grpc]\n"
                f'  address = "{self.containerd_socket}"\n'
            )
            self.containerd_socket.unlink(missing_ok=True)  # so waiting for it means something
            containerd = _need_binary("containerd")
            self.containerd = self._spawn([containerd, "--config", str(config)], "containerd.log")
        self._dockerd_argv = [
            dockerd,
            "--host", self.url,
            "--data-root", str(self.data_root / "docker" if self.own_containerd else self.data_root),
            "--exec-root", str(self.exec_root / "docker" if self.own_containerd else self.exec_root),
            "--pidfile", str(self.pidfile),
        ]  # fmt: skip
        if self.config_file:
            self._dockerd_argv += ["--config-file", str(self.config_file)]
        if self.cgroup_parent:
            self._dockerd_argv += ["--cgroup-parent", self.cgroup_parent]
        if self.own_containerd:
            self._dockerd_argv += ["--containerd", str(self.containerd_socket)]
        self._dockerd_argv += self.extra_args
        if self.dockerd is not None and self.dockerd.poll() is not None:
            self.dockerd = None
        if self.dockerd is None and not self.own_containerd:
            self.dockerd = self._spawn(self._dockerd_argv, "dockerd.log")

    def wait_ready(self, timeout: float = 60.0) -> None:
        if self.dockerd is None:
            if self.own_containerd:
                wait_until(
                    self.containerd_socket.exists, timeout, "containerd",
                    proc=self.containerd, log=self.log_dir / "containerd.log",
                )  # fmt: skip
            self.dockerd = self._spawn(self._dockerd_argv, "dockerd.log")
        wait_until(
            lambda: docker_ping(self.socket_path), timeout, f"Docker engine on {self.socket_path}",
            proc=self.dockerd, log=self.log_path,
        )  # fmt: skip

    def start(self, timeout: float = 60.0) -> DockerEngine:
        self.spawn()
        self.wait_ready(timeout)
        return self

    @property
    def running(self) -> bool:
        return self.dockerd is not None and self.dockerd.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill dockerd only (containerd and the containers' shims live on, as on a real crash)."""
        if self.dockerd is not None and self.dockerd.poll() is None:
            self.dockerd.send_signal(sig)
            self.dockerd.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop dockerd (it stops its containers first), then its containerd."""
        stop_process(self.dockerd, signal.SIGTERM, timeout)
        self.dockerd = None
        stop_process(self.containerd, signal.SIGTERM, timeout)
        self.containerd = None


def ensure_docker_engine(log_dir: Path, timeout: float = 60.0) -> tuple[str, DockerEngine | None]:
    """The URL of the host's Docker engine, starting dockerd if none answers.

    Returns (url, engine); `engine` is None when an engine was already running (it is not
    ours to stop) and the DockerEngine when we started it.
    """
    docker_host = os.environ.get("DOCKER_HOST", "")
    if docker_host and not docker_host.startswith("unix://"):
        return docker_host, None  # a remote engine: trust it, the agent will say if it is wrong
    socket_path = docker_host.removeprefix("unix://") or "/var/run/docker.sock"
    if docker_ping(socket_path):
        return f"unix://{socket_path}", None
    _need_binary("dockerd")
    if not is_root():
        raise ServiceError(
            f"No Docker engine answers on {socket_path}. Start it (e.g. `sudo service docker start`) "
            "or run `make run` as root, which starts dockerd itself."
        )
    engine = DockerEngine(
        socket_path=Path(socket_path),
        data_root=Path("/var/lib/docker"),
        exec_root=Path("/var/run/docker"),
        pidfile=Path("/var/run/docker.pid"),
        log_dir=Path(log_dir),
    )
    engine.start(timeout)
    return engine.url, engine
