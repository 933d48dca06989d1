"""Fixtures for every test. The private PostgreSQL and Redis themselves come from the
`tests.harness.plugin` plugin (loaded by pyproject's addopts), which starts them before
Django is set up and exports DATABASE_URL, REDIS_URL and friends."""

import os
from pathlib import Path

import pytest

from tests.harness.controlplane import ControlPlane
from tests.harness.hosts import Host, HostPool
from tests.harness.plugin import SERVICES_KEY, TestServices

live_state: dict[str, object] = {}  # the live pool and control plane, for failure reports
_ORDER = ("unit", "integration", "e2e", "browser")


def pytest_collection_modifyitems(config, items):
    """Fast and pure first, the browser last: Playwright's sync API keeps an event loop
    running in the main thread while a browser is open, which later asyncio tests would trip on."""
    here = Path(__file__).parent

    def rank(item):
        parts = Path(item.path).relative_to(here).parts if here in Path(item.path).parents else ()
        return _ORDER.index(parts[0]) if parts and parts[0] in _ORDER else len(_ORDER)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def berth_services(request) -> TestServices:
    """The session's private services: `.postgres` (PostgresServer), `.redis` (RedisServer),
    `.root` (the session directory), `.database_url(name)`, `.redis_url(db)`."""
    services = request.config.stash.get(SERVICES_KEY, None)
    if services is None:
        pytest.fail("the Berth test services are not running: run pytest with -p tests.harness.plugin")
    return services


@pytest.fixture(scope="session")
def e2e_hosts(berth_services) -> list[Host]:
    """All hosts, started once per session; prefer `hosts`, which also cleans them per test."""
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root (network namespaces, Docker engines): run them as root or in CI")
    count = int(os.environ.get("BERTH_E2E_HOSTS", "2"))
    pool = HostPool(berth_services.session, [f"h{i}" for i in range(1, count + 1)])
    pool.start()
    live_state["pool"] = pool
    try:
        yield pool.hosts
    finally:
        live_state.pop("pool", None)
        pool.stop()


@pytest.fixture
def hosts(e2e_hosts) -> list[Host]:
    """The session's hosts (hosts[0] is h1), clean before and after the test."""
    for host in e2e_hosts:
        host.reset()
    yield e2e_hosts
    for host in e2e_hosts:
        host.reset()


@pytest.fixture(scope="session")
def control_plane(berth_services) -> ControlPlane:
    """uvicorn, the Celery worker and scheduler, and beat on database berth_e2e (see ControlPlane)."""
    plane = ControlPlane(berth_services)
    live_state["control_plane"] = plane
    try:
        plane.start()
        yield plane
    finally:
        live_state.pop("control_plane", None)
        plane.stop()


@pytest.fixture
def fresh_control_plane(control_plane) -> ControlPlane:
    """The control plane with an emptied database (new admin API token); costs a few seconds."""
    control_plane.reset_data()
    return control_plane


@pytest.fixture
def api(control_plane):
    """The admin's authenticated API client (a requests.Session taking relative paths)."""
    control_plane.check_alive()
    return control_plane.api
