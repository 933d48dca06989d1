"""Berth end to end: a real control plane, two hosts (network namespaces) each with its own
Docker engine and its own agent; deployments go in through REST and come out as
containers in the engines."""

from __future__ import annotations

import signal
import time
from datetime import UTC, datetime

import pytest

from tests.e2e.cluster import (
    IMAGE,
    LABELS,
    SLEEPER,
    all_containers,
    create,
    node_status,
    parse_time,
    replicas_of,
    running_containers,
    unique,
)
from tests.harness.waiting import wait_for


def test_deploy_scale_delete_on_real_hosts(cluster, api):
    hosts = cluster
    name = unique("web")
    test_start = datetime.now(UTC)
    started = time.monotonic()
    create(api, name, 4)

    def four_running_spread():
        seen = running_containers(hosts, name)
        return seen if sum(map(len, seen.values())) == 4 and all(seen.values()) else None

    seen = wait_for(
        four_running_spread, 15, lambda: f"4 containers over both hosts: {running_containers(hosts, name)}"
    )
    elapsed = time.monotonic() - started
    print(f"4 replicas running on real hosts {elapsed:.2f} s after the POST")
    api_replicas = {r["name"]: r for r in replicas_of(api, name)}
    for host_name, containers in seen.items():
        for container in containers:
            labels = container.labels
            assert all(key in labels for key in LABELS), labels
            assert labels["berth.namespace"] == "default" and labels["berth.deployment"] == name
            replica = api_replicas[labels["berth.replica"]]
            assert replica["node"] == host_name  # each seen in the engine of the host it is placed on
    wait_for(
        lambda: all(r["phase"] == "Running" and r["container_id"] for r in replicas_of(api, name)),
        10,
        lambda: f"the API to report 4 Running: {replicas_of(api, name)}",
    )
    wait_for(
        lambda: (
            api.get(f"/api/v1/namespaces/default/deployments/{name}/").json()["status"]["ready_replicas"] == 4
        ),
        10,
        "status.ready_replicas == 4",
    )

    assert (
        api.patch(f"/api/v1/namespaces/default/deployments/{name}/", json={"replicas": 1}).status_code == 200
    )
    wait_for(
        lambda: len(all_containers(hosts, name)) == 1 and len(replicas_of(api, name)) == 1,
        15,
        lambda: f"exactly one container left: {[c.name for c in all_containers(hosts, name)]}",
    )
    assert sum(map(len, running_containers(hosts, name).values())) == 1

    assert api.delete(f"/api/v1/namespaces/default/deployments/{name}/").status_code == 204
    assert api.get(f"/api/v1/namespaces/default/deployments/{name}/").status_code == 404
    wait_for(
        lambda: not all_containers(hosts, name), 15, lambda: f"no containers: {all_containers(hosts, name)}"
    )
    # All along, the agents' connections held: no node went NotReady during the test.
    for host in hosts:
        events = api.get("/api/v1/events/", params={"kind": "Node", "name": host.name}).json()["results"]
        flaps = [
            e for e in events if e["reason"] == "NodeNotReady" and parse_time(e["last_seen"]) >= test_start
        ]
        assert not flaps, f"{host.name} went NotReady during the test: {flaps}"


def test_agent_restart_adopts_its_containers(cluster, api, control_plane):
    hosts = cluster
    h1 = hosts[0]
    name = unique("adopt")
    create(api, name, 4)
    wait_for(lambda: len(running_containers(hosts, name)[h1.name]) == 2, 15, "two replicas on h1")
    before = sorted(c.id for c in running_containers(hosts, name)[h1.name])

    h1.kill_agent(signal.SIGKILL)
    wait_for(lambda: node_status(api, h1.name) == "NotReady", 10, "h1 NotReady after its agent died")
    h1.start_agent(control_plane.agent_url_for(h1), None)  # the credential from its state dir
    wait_for(
        lambda: node_status(api, h1.name) == "Ready", 15, lambda: f"h1 Ready again: {h1.agent_output(20)}"
    )
    wait_for(
        lambda: all(r["phase"] == "Running" for r in replicas_of(api, name)),
        10,
        lambda: f"replicas Running again: {replicas_of(api, name)}",
    )
    after = sorted(c.id for c in h1.berth_containers() if c.labels.get("berth.deployment") == name)
    assert after == before  # adopted: the same containers, none added
    assert len(all_containers(hosts, name)) == 4


def test_foreign_containers_are_never_touched(cluster, api):
    h1 = cluster[0]
    foreign = h1.docker.containers.run(
        IMAGE, SLEEPER, name=unique("mine"), detach=True, labels={"owner": "someone-else"}
    )
    name = unique("neighbour")
    create(api, name, 2)
    wait_for(lambda: sum(map(len, running_containers(cluster, name).values())) == 2, 15, "2 replicas running")
    api.delete(f"/api/v1/namespaces/default/deployments/{name}/")
    wait_for(lambda: not all_containers(cluster, name), 15, "the deployment's containers gone")
    foreign.reload()
    assert foreign.status == "running"


@pytest.mark.parametrize("how", ["stopped", "frozen"])
def test_a_stopped_agent_makes_its_node_not_ready_within_the_grace(cluster, api, control_plane, how):
    """`stopped`: the agent exits (its connection closes). `frozen`: SIGSTOP, the connection
    stays open and only the missing heartbeats tell; that takes the grace."""
    h2 = cluster[1]
    grace = float(control_plane.env.get("BERTH_NODE_GRACE_SECONDS", 10))
    started = time.monotonic()
    if how == "stopped":
        h2.kill_agent(signal.SIGTERM)
    else:
        h2.agent.send_signal(signal.SIGSTOP)
    try:
        # The monitor looks every second: allow one tick beyond the grace.
        wait_for(lambda: node_status(api, h2.name) == "NotReady", grace + 1.5, f"{h2.name} NotReady")
        elapsed = time.monotonic() - started
        print(f"{how}: NotReady after {elapsed:.2f} s (grace {grace:g} s)")
        node = api.get(f"/api/v1/nodes/{h2.name}/").json()
        expected = "AgentDisconnected" if how == "stopped" else "HeartbeatTimeout"
        assert node["status_reason"] == expected, node
        if how == "frozen":
            assert elapsed > 1.0  # it really waited for heartbeats to stop, not for a disconnect
    finally:
        if how == "frozen":
            h2.agent.send_signal(signal.SIGCONT)
    if how == "frozen":
        wait_for(lambda: node_status(api, h2.name) == "Ready", 10, "Ready again once heartbeats resume")
