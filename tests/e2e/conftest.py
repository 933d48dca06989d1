"""E2E fixtures: real hosts (network namespaces with Docker engines) and a real control plane.

    def test_replica_runs(control_plane, hosts):
        h1 = hosts[0]
        h1.start_agent(control_plane.agent_url_for(h1), control_plane.new_join_token())
        control_plane.api.post("/api/v1/namespaces/default/deployments/", json={...})
        control_plane.wait_for(lambda: h1.berth_containers(), 60, "a container on h1")

Engines start once per session (BERTH_E2E_HOSTS hosts, default 2); every test gets them
back clean: no agent, link up, engine running, no containers, empty agent state. The
control plane also lives for the whole session, so its database keeps what earlier tests
created: use names of your own, or ask for `fresh_control_plane`.
Every test in this directory is marked `e2e`. They need root; without it they are skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.harness.controlplane import ControlPlane
from tests.harness.hosts import Host, HostPool

HERE = Path(__file__).parent
_state: dict[str, object] = {}  # the live pool and control plane, for failure reports


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_hosts(berth_services) -> list[Host]:
    """All hosts, started once per session; prefer `hosts`, which also cleans them per test."""
    if os.geteuid() != 0:
        pytest.skip("e2e tests need root (network namespaces, Docker engines): run them as root or in CI")
    count = int(os.environ.get("BERTH_E2E_HOSTS", "2"))
    pool = HostPool(berth_services.session, [f"h{i}" for i in range(1, count + 1)])
    pool.start()
    _state["pool"] = pool
    try:
        yield pool.hosts
    finally:
        _state.pop("pool", None)
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
    """uvicorn + Celery worker + beat on database berth_e2e; see ControlPlane for the API."""
    plane = ControlPlane(berth_services)
    _state["control_plane"] = plane
    try:
        plane.start()
        yield plane
    finally:
        _state.pop("control_plane", None)
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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and HERE in Path(item.path).parents:
        plane = _state.get("control_plane")
        if isinstance(plane, ControlPlane):
            report.sections.append((f"control plane logs ({report.when})", plane.logs(40)))
        pool = _state.get("pool")
        if isinstance(pool, HostPool):
            for host in pool.hosts:
                report.sections.append((f"agent on {host.name} ({report.when})", host.agent_output(40)))
    return report
