"""`make run`: a complete local Berth in one terminal.

Starts (or reuses, under .data/) a private PostgreSQL and Redis unless DATABASE_URL /
REDIS_URL are set, makes sure a Docker engine answers, migrates, creates the `admin` user
and an API token once, imports the demo image, then runs the web server, a Celery worker,
the scheduler (a Celery worker of one process), Celery beat and a local agent, each line
of their output prefixed with its name.
Ctrl-C (or SIGTERM) stops everything in order; if one of them dies, the rest are stopped
too and the exit code is 1. The next `make run` reuses .data/.

Environment: BERTH_PORT (default 8000), BERTH_REDIS_PORT (6389), BERTH_DATA_DIR (.data).
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from pathlib import Path

from devtools import commands
from devtools.services import (
    PostgresServer,
    RedisServer,
    ServiceError,
    die_with_parent,
    ensure_docker_engine,
    stop_process,
)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("BERTH_DATA_DIR") or REPO / ".data").absolute()
LOGS = DATA / "logs"
PORT = int(os.environ.get("BERTH_PORT", "8000"))
REDIS_PORT = int(os.environ.get("BERTH_REDIS_PORT", "6389"))
DEMO_IMAGE = "berth-demo/busybox:latest"
PYTHON = sys.executable


class Stop(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM: unwinds into the orderly shutdown."""


_print_lock = threading.Lock()
_COLOURS = {"web": 36, "worker": 35, "scheduler": 95, "beat": 34, "agent": 32, "setup": 33, "make-run": 1}


def say(name: str, line: str) -> None:
    prefix = f"{name:>8} | "
    if sys.stdout.isatty():
        prefix = f"\033[{_COLOURS.get(name, 0)}m{prefix}\033[0m"
    with _print_lock:
        sys.stdout.write(prefix + line.rstrip("\n") + "\n")
        sys.stdout.flush()


def note(line: str) -> None:
    say("make-run", line)


class Child:
    """A long-running process whose output is relayed line by line with its name in front."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # Own session: the terminal's Ctrl-C reaches only us, and we stop children in order.
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )
        self._relay = threading.Thread(target=self._pump, name=f"relay-{name}", daemon=True)
        self._relay.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            say(self.name, raw.decode("utf-8", "replace"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if self.alive():
            note(f"stopping {self.name}")
        stop_process(self.proc, signal.SIGTERM, timeout)
        self._relay.join(2)


def manage(env: dict[str, str], *args: str, capture: bool = False) -> str:
    """Run a management command, relaying its output; with capture, return its stdout instead."""
    proc = subprocess.run(
        [PYTHON, "manage.py", *args],
        cwd=REPO, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    for line in proc.stderr.splitlines():
        say("setup", line)
    if not capture:
        for line in proc.stdout.splitlines():
            say("setup", line)
    if proc.returncode != 0:
        raise ServiceError(f"manage.py {' '.join(args)} failed (exit code {proc.returncode}); see above.")
    return proc.stdout


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ServiceError("a management command printed nothing where a secret was expected")
    return lines[-1]


def new_api_token(env: dict[str, str]) -> str:
    return last_line(manage(env, "api_token", "admin", "--name", "make run", capture=True))


def write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    path.chmod(0o600)


def node_name() -> str:
    """The host name as a DNS-1123 label (the agent protocol's rule for node names)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")[:63].strip("-")
    return name or "local"


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def ensure_demo_image(docker_url: str) -> None:
    import docker

    from devtools.images import ensure_busybox

    client = docker.DockerClient(base_url=docker_url, version="auto", timeout=60)
    try:
        if ensure_busybox(client, DEMO_IMAGE):
            note(f"imported {DEMO_IMAGE} into the local engine (built from /bin/busybox)")
    finally:
        client.close()


def _on_signal(signum, frame):
    # Only the first signal interrupts; the shutdown that follows must not be cut short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Stop(signal.Signals(signum).name)


def run(stack: ExitStack, children: list[Child]) -> int:
    for directory in (DATA, LOGS):
        directory.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("BERTH_DATA_DIR", str(DATA))

    if not os.environ.get("DATABASE_URL"):
        # Unix socket only (listen_addresses=''): the same URL settings.py uses by default,
        # so `manage.py` works beside `make run` with no configuration.
        postgres = PostgresServer(DATA / "postgres", DATA / "run", LOGS / "postgres.log")
        note(f"starting PostgreSQL in {postgres.data_dir} (log: {postgres.log_path})")
        postgres.start()
        stack.callback(stopping, "PostgreSQL", postgres.stop)
        postgres.create_database("berth")
        env["DATABASE_URL"] = postgres.url("berth")
    if not os.environ.get("REDIS_URL"):
        redis = RedisServer(DATA / "redis", LOGS / "redis.log", port=REDIS_PORT)
        note(f"starting Redis on 127.0.0.1:{REDIS_PORT} (log: {redis.log_path})")
        try:
            redis.start()
        except ServiceError as exc:
            if "already in use" in str(exc):
                raise ServiceError(
                    f"port {REDIS_PORT} is taken (another `make run`?): stop it, or set BERTH_REDIS_PORT"
                ) from None
            raise
        stack.callback(stopping, "Redis", redis.stop)
        env["REDIS_URL"] = redis.url(0)

    docker_url, engine = ensure_docker_engine(LOGS)
    if engine is not None:
        # We started dockerd because none was running, so we stop it again on exit (its
        # containers stop with it; the agent adopts them on the next `make run`). An engine
        # that was already running is not ours and is left alone.
        note(f"started dockerd (log: {engine.log_path}); it is stopped again when make run ends")
        stack.callback(stopping, "dockerd", engine.stop)
    else:
        note(f"using the Docker engine at {docker_url}")

    manage(env, "migrate", "--noinput")
    password_file = DATA / "admin_password"
    new_password = not password_file.exists()
    if new_password:
        write_secret(password_file, secrets.token_urlsafe(15))
    bootstrap = manage(env, "bootstrap_admin", "--password-file", str(password_file), capture=True)
    if new_password and "exists" in bootstrap:
        note(f"warning: user admin already existed, so {password_file} is not its password; "
             "set one with: .venv/bin/python manage.py changepassword admin")  # fmt: skip
    token_file = DATA / "api_token"
    if not token_file.exists() or not token_file.read_text().strip():
        write_secret(token_file, new_api_token(env))
    ensure_demo_image(docker_url)

    base_url = f"http://127.0.0.1:{PORT}"
    children.append(Child("web", commands.web(PYTHON, "127.0.0.1", PORT), env))
    children.append(Child("worker", commands.worker(PYTHON), env))
    children.append(Child("scheduler", commands.scheduler(PYTHON), env))
    children.append(Child("beat", commands.beat(PYTHON, DATA / "celerybeat-schedule"), env))
    deadline = time.monotonic() + 60
    while True:
        check_children(children)
        try:
            if http_status(f"{base_url}/api/v1/health") == 200:
                break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ServiceError(f"the web server did not answer {base_url}/api/v1/health within 60 s")
        time.sleep(0.3)

    token = token_file.read_text().strip()
    if http_status(f"{base_url}/api/v1/nodes/", token) == 401:
        note(f"{token_file} holds a token this database does not know (was it reset?); creating a new one")
        token = new_api_token(env)
        write_secret(token_file, token)

    join_token = last_line(manage(env, "join_token", "--description", "make run local agent", capture=True))
    agent_env = {k: v for k, v in env.items() if k not in ("DATABASE_URL", "REDIS_URL", "BERTH_SECRET_KEY")}
    children.append(Child("agent", [
        PYTHON, "-m", "agent", "--server", base_url, "--join-token", join_token, "--name", node_name(),
        "--docker-host", docker_url, "--state-dir", str(DATA / "agent"),
    ], agent_env))  # fmt: skip

    banner = [
        "",
        "Berth is running.",
        f"  Dashboard:  {base_url}/",
        f"  Login:      admin / {password_file.read_text().strip()}   (kept in {password_file})",
        f"  API token:  {token}   (kept in {token_file})",
        f'  Try:        curl -H "Authorization: Bearer $(cat {token_file})" {base_url}/api/v1/nodes/',
        f"  Logs of PostgreSQL, Redis (and dockerd, if started here): {LOGS}",
        "Press Ctrl-C to stop.",
        "",
    ]
    for line in banner:
        note(line)
    while True:
        check_children(children)
        time.sleep(0.5)


def stopping(what: str, stop) -> None:
    note(f"stopping {what}")
    try:
        stop()
    except Exception as exc:
        note(f"stopping {what} failed: {exc}")


def check_children(children: list[Child]) -> None:
    for child in children:
        if not child.alive():
            raise ServiceError(
                f"{child.name} exited unexpectedly with code {child.proc.returncode} (its output is above); "
                "stopping everything."
            )


def main() -> int:
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    children: list[Child] = []
    code = 0
    with ExitStack() as stack:
        try:
            run(stack, children)
        except Stop as stop:
            note(f"{stop} received: stopping")
        except ServiceError as exc:
            for line in str(exc).splitlines():
                note(line)
            code = 1
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            # The agent first (it should not watch the control plane vanish), then the web
            # server, workers and beat; PostgreSQL, Redis and dockerd follow from the stack.
            for name in ("agent", "web", "worker", "scheduler", "beat"):
                for child in children:
                    if child.name == name:
                        child.stop()
    note("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
