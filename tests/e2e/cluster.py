"""Helpers for the e2e tests: what a test asks of the API and of the hosts' engines."""

from __future__ import annotations

import uuid
from datetime import datetime

from tests.harness.waiting import wait_for

IMAGE = "berth-test/busybox:1"
LABELS = ("berth.namespace", "berth.deployment", "berth.replica")


def node_status(api, name):
    response = api.get(f"/api/v1/nodes/{name}/")
    return response.json()["status"] if response.status_code == 200 else None


def running_containers(hosts, deployment):
    """{host name: [containers of this deployment running in that host's engine]}"""
    return {
        host.name: [
            c
            for c in host.berth_containers(all=False)
            if c.labels.get("berth.deployment") == deployment and c.status == "running"
        ]
        for host in hosts
    }


def all_containers(hosts, deployment):
    return [
        c for host in hosts for c in host.berth_containers() if c.labels.get("berth.deployment") == deployment
    ]


# A process that stops at once on SIGTERM (a bare `sleep` as PID 1 ignores it, and every
# stop would wait out the engine's 10 s grace).
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


def create(api, name, replicas, **spec):
    body = {"name": name, "image": IMAGE, "replicas": replicas, "command": SLEEPER, **spec}
    response = api.post("/api/v1/namespaces/default/deployments/", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def replicas_of(api, name):
    return api.get(f"/api/v1/namespaces/default/deployments/{name}/replicas/").json()["results"]


def parse_time(text):
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def start_agents(control_plane, api, hosts, labels=None):
    """Start the agents of `hosts` (labels per host name) and wait until their nodes are Ready."""
    token = control_plane.new_join_token()
    for host in hosts:
        host.start_agent(control_plane.agent_url_for(host), token, (labels or {}).get(host.name))
    wait_for(
        lambda: all(node_status(api, h.name) == "Ready" for h in hosts),
        30,
        lambda: (
            f"nodes Ready: {[(h.name, node_status(api, h.name)) for h in hosts]}; agent {hosts[0].name}: "
            f"{hosts[0].agent_output(15)}"
        ),
    )


def clean_up(api, hosts):
    """Remove every deployment, and undo what tests set on the nodes (they outlive a test)."""
    for deployment in api.get("/api/v1/namespaces/default/deployments/").json()["results"]:
        api.delete(f"/api/v1/namespaces/default/deployments/{deployment['name']}/")
    for host in hosts:
        api.patch(
            f"/api/v1/nodes/{host.name}/",
            json={
                "labels": {},
                "taints": [],
                "unschedulable": False,
                "reserved": {"cpu": "0", "memory": "0"},
            },
        )
