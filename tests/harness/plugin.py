"""Pytest plugin, loaded with `-p tests.harness.plugin` (see pyproject.toml).

Before pytest-django sets Django up, it starts a private PostgreSQL cluster and a private
redis-server for the session, in /tmp/berth-test-<tag>/ on free ports, and points Berth's
settings at them through the environment (DATABASE_URL, REDIS_URL, ...). pytest-django
then creates its `test_berth` database on that cluster. Everything is stopped and removed
at pytest_unconfigure; what a killed earlier run left behind is swept at the next start.
Tests never see services a developer happened to leave running.
"""

from __future__ import annotations

import atexit
import os
import secrets
import signal
import time
from collections.abc import Sequence

import pytest

from devtools.services import PostgresServer, RedisServer, ServiceError, free_port
from tests.harness.session import HarnessSession, sweep_stale_sessions

# What the settings module reads, as the tests want it. Short node timings keep e2e tests fast.
TEST_TIMINGS = {
    "BERTH_NODE_GRACE_SECONDS": "6",
    "BERTH_AGENT_HEARTBEAT_SECONDS": "1",
    # In the test process, connections close after each use: the agent consumer's pool
    # threads would otherwise hold some open, and pytest-django could not drop its test
    # database at the end. Control planes the harness starts run with the pool, as deployed
    # (tests/harness/controlplane.py).
    "BERTH_DB_CONN_MAX_AGE": "0",
    "BERTH_DB_POOL_SIZE": "0",
}


class TestServices:
    """The session's private directory, PostgreSQL and Redis."""

    __test__ = False  # not a test class, whatever its name says

    def __init__(self, session: HarnessSession, postgres: PostgresServer, redis: RedisServer) -> None:
        self.session = session
        self.postgres = postgres
        self.redis = redis
        self.swept: list[str] = []
        self._stopped = False

    @property
    def root(self):
        return self.session.root

    def database_url(self, dbname: str = "berth") -> str:
        return self.postgres.url(dbname)

    def redis_url(self, db: int = 0) -> str:
        return self.redis.url(db)

    # --- faults (tests/e2e/test_control_plane_faults.py); both servers are shared by the whole
    # session, so every fault leaves them running again on the same ports.

    def restart_postgres(self, *, down_for: float = 0.0, immediate: bool = False) -> float:
        """Restart PostgreSQL (every connection is cut), keeping it stopped for `down_for`
        seconds (an outage of that length); returns how long it was unreachable (s)."""
        started = time.monotonic()
        self.postgres.stop(immediate=immediate)
        _outage(started, down_for)
        self.postgres.start()
        return time.monotonic() - started

    def restart_redis(self, *, down_for: float = 0.0) -> float:
        """Kill Redis and start an empty one on the same port (it persists nothing): queues,
        channel groups, heartbeats are all gone. Returns how long it was unreachable (s)."""
        started = time.monotonic()
        self.redis.stop(sig=signal.SIGKILL)
        _outage(started, down_for)
        self.redis.start()
        return time.monotonic() - started

    def ensure_running(self) -> None:
        """Start whichever of the two a failed fault test left stopped."""
        if not self.postgres.running:
            self.postgres.start()
        if self.redis.proc is None or self.redis.proc.poll() is not None:
            self.redis.start()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        for stop in (self.redis.stop, self.postgres.stop):
            try:
                stop()
            except Exception as exc:  # keep going: the session teardown below kills leftovers
                print(f"berth harness: stopping a service failed: {exc}")
        self.session.close(keep_files=os.environ.get("BERTH_KEEP_TEST_DIR") == "1")


def _outage(started: float, seconds: float) -> None:
    # The length of the fault itself, not a wait for something to happen.
    remaining = started + seconds - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)


SERVICES_KEY = pytest.StashKey[TestServices]()
_current: TestServices | None = None


def current() -> TestServices:
    """The running session's services (for code that has no pytest `config` at hand)."""
    if _current is None:
        raise RuntimeError("the Berth test services are not running (is -p tests.harness.plugin loaded?)")
    return _current


def _start_with_free_port(make, attempts: int = 5):
    """Start a server on a free port, choosing another one if we lose the race for it."""
    for attempt in range(attempts):
        server = make(free_port())
        try:
            return server.start()
        except ServiceError as exc:
            server.stop()
            if "already in use" not in str(exc) or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def start_services(postgres_settings: Sequence[str] = ()) -> TestServices:
    """A private PostgreSQL (with these more `name=value` settings) and Redis."""
    swept = sweep_stale_sessions()
    session = HarnessSession.create()
    root = session.root
    # Every child process inherits the marker, so a crashed session's leftovers can be found.
    os.environ.update(session.env)
    try:
        postgres = _start_with_free_port(
            lambda port: PostgresServer(
                root / "postgres", root / "pg-socket", root / "logs" / "postgres.log",
                port=port, listen_tcp=True, for_tests=True, settings=postgres_settings,
            )
        )  # fmt: skip
        postgres.create_database("berth")
        redis = _start_with_free_port(
            lambda port: RedisServer(root / "redis", root / "logs" / "redis.log", port=port)
        )
    except BaseException:
        session.close(keep_files=True)
        raise
    services = TestServices(session, postgres, redis)
    services.swept = swept
    os.environ.update(
        {
            "DATABASE_URL": postgres.url("berth"),
            "REDIS_URL": redis.url(0),
            "BERTH_DATA_DIR": str(root / "data"),
            "BERTH_SECRET_KEY": secrets.token_urlsafe(50),
            **TEST_TIMINGS,
        }
    )
    return services


def _no_services_needed(args: list[str]) -> bool:
    return any(arg in ("-h", "--help", "--version", "-V", "--fixtures-per-test") for arg in args)


def _raise_interrupt(signum, frame):
    # pytest turns KeyboardInterrupt into an orderly stop: fixtures are finalised, unconfigure runs.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config, parser, args):
    global _current
    if not _no_services_needed(args) and _current is None:
        try:
            services = start_services()
        except ServiceError as exc:
            raise pytest.UsageError(f"Berth test services could not start:\n{exc}") from exc
        _current = services
        early_config.stash[SERVICES_KEY] = services
        atexit.register(services.stop)
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _raise_interrupt)
    return (yield)


def pytest_report_header(config):
    services = config.stash.get(SERVICES_KEY, None)
    if services is None:
        return None
    lines = [
        f"berth: private PostgreSQL on 127.0.0.1:{services.postgres.port}, "
        f"Redis on 127.0.0.1:{services.redis.port}, files in {services.root}"
    ]
    if services.swept:
        lines.append(f"berth: removed leftovers of earlier runs: {', '.join(services.swept)}")
    return lines


def pytest_unconfigure(config):
    global _current
    services = config.stash.get(SERVICES_KEY, None)
    if services is not None:
        services.stop()
        if _current is services:
            _current = None
