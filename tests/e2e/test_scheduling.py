"""The scheduler on real hosts: what it decides shows up in the hosts' own engines."""

from __future__ import annotations

from tests.e2e.cluster import all_containers, create, replicas_of, running_containers, unique
from tests.harness.waiting import wait_for

DEPLOYMENTS = "/api/v1/namespaces/default/deployments/"


def placed_on(hosts, name):
    """{host name: number of this deployment's running containers in its engine}"""
    return {host: len(containers) for host, containers in running_containers(hosts, name).items()}


def test_node_selector_puts_replicas_only_on_the_labelled_host(agents, hosts, api):
    agents(hosts, labels={"h1": {"disk": "ssd"}})  # the agent reports the label (--labels)
    name = unique("ssd")
    create(api, name, 3, node_selector={"disk": "ssd"})
    wait_for(
        lambda: placed_on(hosts, name) == {"h1": 3, "h2": 0}, 15, lambda: f"3 on h1: {placed_on(hosts, name)}"
    )


def test_too_big_stays_pending_with_the_reason_until_a_host_with_room_joins(agents, hosts, api):
    h1, h2 = hosts
    agents([h1])
    node = api.get("/api/v1/nodes/h1/").json()
    room = 256 * 2**20
    reserved = node["capacity"]["memory"] - room  # leave h1 only 256 MiB
    response = api.patch("/api/v1/nodes/h1/", json={"reserved": {"memory": str(reserved)}})
    assert response.status_code == 200, response.text
    name = unique("big")
    create(api, name, 1, resources={"memory": "1Gi"})

    def pending_reason():
        rows = replicas_of(api, name)
        return rows and rows[0]["node"] is None and rows[0]["message"]

    reason = wait_for(pending_reason, 10, lambda: f"a pending replica: {replicas_of(api, name)}")
    assert "insufficient memory" in reason, reason
    events = api.get("/api/v1/events/", params={"name": name}).json()["results"]
    assert any(e["reason"] == "FailedScheduling" and "insufficient memory" in e["message"] for e in events), (
        events
    )

    agents([h2])  # a host with room joins: the replica goes there without anyone asking again
    wait_for(
        lambda: placed_on(hosts, name) == {"h1": 0, "h2": 1}, 15, lambda: f"on h2: {replicas_of(api, name)}"
    )


def test_a_cordoned_node_gets_no_new_replicas(cluster, api):
    hosts = cluster
    assert api.post("/api/v1/nodes/h1/cordon").status_code == 200
    name = unique("cordon")
    create(api, name, 4)
    wait_for(
        lambda: placed_on(hosts, name) == {"h1": 0, "h2": 4}, 15, lambda: f"4 on h2: {placed_on(hosts, name)}"
    )


def test_a_no_execute_taint_moves_replicas_away(cluster, api):
    hosts = cluster
    name = unique("evict")
    create(api, name, 4)
    wait_for(
        lambda: placed_on(hosts, name) == {"h1": 2, "h2": 2}, 15, lambda: f"2 and 2: {placed_on(hosts, name)}"
    )
    taint = {"key": "maintenance", "value": "", "effect": "NoExecute"}
    assert api.patch("/api/v1/nodes/h1/", json={"taints": [taint]}).status_code == 200
    wait_for(
        lambda: placed_on(hosts, name) == {"h1": 0, "h2": 4} and len(all_containers(hosts, name)) == 4,
        20,
        lambda: f"all 4 on h2, none left on h1: {placed_on(hosts, name)}",
    )
    events = api.get("/api/v1/events/", params={"kind": "Replica"}).json()["results"]
    assert any(e["reason"] == "Evicted" and "maintenance:NoExecute" in e["message"] for e in events)


def test_the_engine_enforces_cpu_and_memory_limits(cluster, api):
    hosts = cluster
    name = unique("limits")
    create(api, name, 1, resources={"cpu": "250m", "memory": "64Mi"})
    wait_for(lambda: sum(placed_on(hosts, name).values()) == 1, 15, "the replica running")
    (container,) = [c for containers in running_containers(hosts, name).values() for c in containers]
    host_config = container.attrs["HostConfig"]
    assert host_config["NanoCpus"] == 250_000_000
    assert host_config["Memory"] == 64 * 2**20
