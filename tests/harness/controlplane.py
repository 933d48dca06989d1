"""The real control plane for e2e tests: uvicorn, the Celery worker and scheduler, and Celery
beat as subprocesses (the command lines of devtools/commands.py).

It gets a database of its own (`berth_e2e`, not pytest-django's `test_berth`) on the session's
private PostgreSQL, and Redis database 1 (integration tests use 0), so the worker never
picks up work enqueued by in-process tests. uvicorn listens on 0.0.0.0 so agents inside
the hosts' namespaces reach it at their gateway address.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urljoin

import requests

from devtools import commands
from devtools.services import die_with_parent, free_port, stop_process, tail
from tests.harness.hosts import REPO, child_env
from tests.harness.plugin import TestServices
from tests.harness.waiting import wait_for

DATABASE = "berth_e2e"
REDIS_DB = 1


class ControlPlaneError(RuntimeError):
    """The control plane did not start, or a part of it died; the message has the logs."""


class ApiClient(requests.Session):
    """A requests.Session bound to the control plane: relative paths, bearer token, a timeout.

    `api.get("/api/v1/nodes/")` -> requests.Response.
    """

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 15.0) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/") + "/"
        self.timeout = timeout
        self.trust_env = False  # never through a proxy: everything here is local
        self.headers["Accept"] = "application/json"
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, url, *args, **kwargs):
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, urljoin(self.base_url, str(url).lstrip("/")), *args, **kwargs)


class ControlPlane:
    """A running control plane. Tests use base_url, api, agent_url_for(), new_join_token(), wait_for()."""

    PROCESSES = ("web", "worker", "scheduler", "beat")
    web_host = "0.0.0.0"  # agents in the test hosts' namespaces reach it through their gateway

    def __init__(self, services: TestServices) -> None:
        self.services = services
        self.dir = services.root / "controlplane"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = child_env(services.session)
        self.env.update(
            DATABASE_URL=services.database_url(DATABASE),
            REDIS_URL=services.redis_url(REDIS_DB),
            BERTH_DATA_DIR=str(self.dir / "data"),
        )
        self.env.pop("BERTH_DB_POOL_SIZE", None)  # the pool, as deployed (off in the test process)
        self.procs: dict[str, subprocess.Popen] = {}
        self.api_token = ""
        self.admin_password = ""
        self.api: ApiClient = ApiClient(self.base_url)
        self.timings: dict[str, float] = {}
        self._argv: dict[str, list[str]] = {}

    # --- what tests use ------------------------------------------------------------------------

    def agent_url_for(self, host) -> str:
        """The URL an agent inside `host`'s namespace uses to reach this control plane."""
        return f"http://{host.gateway}:{self.port}"

    def new_join_token(self) -> str:
        return self.manage_last_line("join_token")

    def client(self, token: str | None = None) -> ApiClient:
        """Another API client (e.g. unauthenticated with token=None)."""
        return ApiClient(self.base_url, token)

    wait_for = staticmethod(wait_for)

    def log_path(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def logs(self, lines: int = 60) -> str:
        """The last lines of each process's log, for failure reports."""
        return "\n".join(
            f"--- {name} ({self.log_path(name)}) ---\n{tail(self.log_path(name), lines)}"
            for name in self.PROCESSES
        )

    def check_alive(self) -> None:
        dead = {name: proc.returncode for name, proc in self.procs.items() if proc.poll() is not None}
        if dead:
            raise ControlPlaneError(f"control plane process(es) exited: {dead}\n{self.logs()}")

    # --- management commands -------------------------------------------------------------------

    def manage(self, *args: str, timeout: float = 300.0, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise ControlPlaneError(
                f"manage.py {' '.join(args)} exited with {result.returncode}:\n"
                f"--- stdout ---\n{result.stdout[-4000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
            )
        return result

    def manage_last_line(self, *args: str) -> str:
        """Run a command that prints a secret on its last line of stdout; return that line."""
        lines = [line.strip() for line in self.manage(*args).stdout.splitlines() if line.strip()]
        if not lines:
            raise ControlPlaneError(f"manage.py {' '.join(args)} printed nothing")
        return lines[-1]

    # --- lifecycle -----------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._argv[name] = argv
        # Each process's PostgreSQL sessions carry its name (pg_stat_activity.application_name).
        env = {**self.env, "PGAPPNAME": f"berth-{name}"}
        with open(self.log_path(name), "ab") as log:
            self.procs[name] = subprocess.Popen(
                argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )  # fmt: skip

    def start(self, timeout: float = 120.0) -> ControlPlane:
        started = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._create_database()
        self.timings["database"] = time.monotonic() - started
        self.api = ApiClient(self.base_url, self.api_token)

        python = sys.executable
        self._spawn("web", commands.web(python, self.web_host, self.port))
        self._spawn("worker", commands.worker(python))
        self._spawn("scheduler", commands.scheduler(python))
        self._spawn("beat", commands.beat(python, self.dir / "beat-schedule"))

        self.wait_healthy(timeout)
        self.timings["ready"] = time.monotonic() - started
        return self

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every process runs and the web server answers its health check."""
        health = ApiClient(self.base_url, timeout=3)

        def healthy() -> bool:
            self.check_alive()
            return health.get("/api/v1/health").status_code == 200

        try:
            wait_for(healthy, timeout, f"GET {self.base_url}/api/v1/health to answer 200",
                     fatal=(ControlPlaneError,))  # fmt: skip
        except ControlPlaneError:
            raise
        except AssertionError as exc:
            raise ControlPlaneError(f"{exc}\n{self.logs()}") from None

    # --- faults --------------------------------------------------------------------------------

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to a process and everything it started (a Celery worker's pool children
        too: they share its process group), and wait for it to end. The process stays down
        until start_process(name)."""
        proc = self.procs.pop(name)
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # Pool children reparented away from the group leader may outlive it for a moment.
        wait_for(lambda: not _group_alive(proc.pid), 10, f"every process of {name} (group {proc.pid}) to end")

    def start_process(self, name: str, timeout: float = 60.0) -> None:
        """Start a process that kill() stopped, with its original command line; wait until healthy."""
        if name in self.procs:
            raise ControlPlaneError(f"{name} is already running (pid {self.procs[name].pid})")
        self._spawn(name, self._argv[name])
        self.wait_healthy(timeout)

    def restart(self, name: str, sig: int = signal.SIGKILL, timeout: float = 60.0) -> None:
        self.kill(name, sig)
        self.start_process(name, timeout)

    def ensure_running(self) -> None:
        """Start again whatever a failed fault test left stopped (SIGSTOP) or dead."""
        for name in self.PROCESSES:
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is not None:
                self.procs.pop(name)
                proc = None
            if proc is not None:
                os.killpg(proc.pid, signal.SIGCONT)  # a test may have frozen some of it
            if proc is None and name in self._argv:
                self._spawn(name, self._argv[name])
        self.wait_healthy()

    def reset_data(self) -> None:
        """Start over with an empty, migrated database (data migrations included), a new admin
        API token, and no nodes. The running processes reconnect by themselves."""
        self._create_database()
        self.api.headers["Authorization"] = f"Bearer {self.api_token}"

    def _create_database(self) -> None:
        # WITH (FORCE) ends the web server's and worker's sessions; Django's connection
        # health checks open new ones on their next query.
        self.services.postgres.drop_database(DATABASE)
        self.services.postgres.create_database(DATABASE)
        self.manage("migrate", "--noinput")
        password_file = self.dir / "admin_password"
        if not self.admin_password:
            self.admin_password = secrets.token_urlsafe(16)
            password_file.write_text(self.admin_password + "\n")
            password_file.chmod(0o600)
        self.manage("bootstrap_admin", "--password-file", str(password_file))
        self.api_token = self.manage_last_line("api_token", "admin")

    def stop(self) -> None:
        for name in ("web", "beat", "worker", "scheduler"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                stop_process(proc, timeout=15)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Zombies count as alive for killpg; look for a live member.
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False
