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

from pathlib import Path

import pytest

from tests.conftest import live_state
from tests.e2e.cluster import clean_up, start_agents
from tests.harness.controlplane import ControlPlane
from tests.harness.hosts import HostPool

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def cluster(control_plane, hosts, api):
    """Every host's agent enrolled and Ready; deployments and node settings undone afterwards."""
    start_agents(control_plane, api, hosts)
    yield hosts
    clean_up(api, hosts)


@pytest.fixture
def agents(control_plane, hosts, api):
    """Start agents yourself: `agents(hosts[:1], labels={"h1": {"disk": "ssd"}})`; cleaned up afterwards."""
    yield lambda chosen, labels=None: start_agents(control_plane, api, chosen, labels)
    clean_up(api, hosts)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed and HERE in Path(item.path).parents:
        plane = live_state.get("control_plane")
        if isinstance(plane, ControlPlane):
            report.sections.append((f"control plane logs ({report.when})", plane.logs(40)))
        pool = live_state.get("pool")
        if isinstance(pool, HostPool):
            for host in pool.hosts:
                report.sections.append((f"agent on {host.name} ({report.when})", host.agent_output(40)))
    return report
