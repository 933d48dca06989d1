"""Rollouts, rollbacks and node loss on real hosts with real agents and engines."""

from __future__ import annotations

import threading
import time

import requests

from tests.e2e.cluster import all_containers, create, replicas_of, running_containers, unique
from tests.harness.waiting import wait_for

DEPLOYMENTS = "/api/v1/namespaces/default/deployments/"

# An HTTP server that answers only after a moment (so readiness matters), and on SIGTERM
# keeps serving for 2 s before it exits (so a replica taken out of rotation drains).
WEB = [
    "sh",
    "-c",
    'mkdir -p /www && echo "$VERSION $HOSTNAME" > /www/index.html && sleep 1 && '
    "httpd -p 8080 -h /www && trap 'sleep 2; exit 0' TERM; while true; do sleep 1; done",
]
READINESS = {"http_get": {"port": 8080, "path": "/index.html"}, "period_seconds": 1, "failure_threshold": 1}


def deployment(api, name):
    return api.get(f"{DEPLOYMENTS}{name}/").json()


def condition(body, kind):
    return next((c for c in body["status"]["conditions"] if c["type"] == kind), {})


def published(hosts, name):
    """[(url, replica)] for every running container of `name`, through its published port."""
    urls = []
    for host in hosts:
        for c in host.berth_containers(all=False):
            if c.labels.get("berth.deployment") != name or c.status != "running":
                continue
            bindings = (c.attrs["NetworkSettings"]["Ports"] or {}).get("8080/tcp") or []
            if bindings:
                urls.append(
                    (f"http://{host.address}:{bindings[0]['HostPort']}/index.html", c.labels["berth.replica"])
                )
    return urls


class Sampler(threading.Thread):
    """Samples, as fast as it can, how many replicas the API calls ready, and asks every
    ready one for a page through its published port: the lowest count, the failures."""

    def __init__(self, api, hosts, name):
        super().__init__(daemon=True)
        self.api, self.hosts, self.name = api, hosts, name
        self.stop = threading.Event()
        self.min_ready = None
        self.samples = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()

    def run(self):
        http = requests.Session()
        http.trust_env = False
        while not self.stop.is_set():
            replicas = replicas_of(self.api, self.name)
            ready = {r["name"] for r in replicas if r["ready"] and r["phase"] == "Running"}
            self.min_ready = len(ready) if self.min_ready is None else min(self.min_ready, len(ready))
            self.samples += 1
            for url, replica in published(self.hosts, self.name):
                if replica not in ready:
                    continue
                try:
                    answer = http.get(url, timeout=2)
                    answer.raise_for_status()
                    self.versions.add(answer.text.split()[0])
                except requests.RequestException as exc:
                    # Readiness may have gone between the two reads; only count it if it is still ready.
                    still = {r["name"] for r in replicas_of(self.api, self.name) if r["ready"]}
                    if replica in still:
                        self.failures.append(f"{replica} at {url}: {exc}")


def test_rolling_update_keeps_enough_ready_replicas_serving(cluster, api):
    name = unique("roll")
    strategy = {"type": "RollingUpdate", "max_surge": 1, "max_unavailable": 1}
    create(
        api, name, 4, command=WEB, env={"VERSION": "v1"}, ports=[{"container": 8080}],
        readiness_probe=READINESS, update_strategy=strategy, termination_grace_seconds=5,
    )  # fmt: skip
    wait_for(lambda: deployment(api, name)["status"]["available_replicas"] == 4, 60, "4 replicas available")
    assert len(published(cluster, name)) == 4

    sampler = Sampler(api, cluster, name)
    sampler.start()
    started = time.monotonic()
    assert api.patch(f"{DEPLOYMENTS}{name}/", json={"env": {"VERSION": "v2"}}).status_code == 200
    try:

        def rolled():
            body = deployment(api, name)
            containers = all_containers(cluster, name)
            return (
                condition(body, "Progressing").get("reason") == "NewReplicasAvailable"
                and body["status"]["revision"] == 2
                and len(containers) == 4
                and all(c.attrs["Config"]["Env"].count("VERSION=v2") for c in containers)
            )

        wait_for(rolled, 90, lambda: f"rollout done; status {deployment(api, name)['status']}")
    finally:
        sampler.stop.set()
        sampler.join(10)
    elapsed = time.monotonic() - started
    assert sampler.samples > 10, f"only {sampler.samples} samples in {elapsed:.1f} s"
    assert sampler.min_ready >= 3, f"ready replicas fell to {sampler.min_ready} (floor 4 - 1)"
    assert sampler.failures == []
    assert sampler.versions == {"v1", "v2"}  # traffic was answered by both, throughout
    history = api.get(f"{DEPLOYMENTS}{name}/revisions/").json()
    assert [(r["revision"], r["replicas"]) for r in history] == [(2, 4), (1, 0)]


def test_an_update_to_a_broken_image_rolls_itself_back(cluster, api):
    name = unique("broken")
    create(api, name, 2, on_failure="rollback", progress_deadline_seconds=8)
    wait_for(lambda: deployment(api, name)["status"]["available_replicas"] == 2, 60, "2 replicas available")
    before = {c.id for c in all_containers(cluster, name)}
    assert (
        api.patch(f"{DEPLOYMENTS}{name}/", json={"image": "berth-test/does-not-exist:1"}).status_code == 200
    )

    def rolled_back():
        body = deployment(api, name)
        return body["image"] == "berth-test/busybox:1" and body["status"]["revision"] == 3

    wait_for(rolled_back, 60, lambda: f"rollback; status {deployment(api, name)['status']}")
    events = api.get("/api/v1/events/", params={"name": name}).json()
    reasons = {e["reason"] for e in events.get("results", events)}
    assert {"RolloutFailed", "RolledBack"} <= reasons

    def settled():
        containers = all_containers(cluster, name)
        return len(containers) == 2 and all(c.image.tags == ["berth-test/busybox:1"] for c in containers)

    wait_for(
        settled, 60, lambda: f"containers {[(c.name, c.image.tags) for c in all_containers(cluster, name)]}"
    )
    # The old replicas served throughout: never stopped, never recreated.
    assert {c.id for c in all_containers(cluster, name)} == before


def test_rollback_to_an_older_revision(cluster, api):
    name = unique("undo")
    create(api, name, 1, env={"STEP": "1"})
    for step in ("2", "3"):
        assert api.patch(f"{DEPLOYMENTS}{name}/", json={"env": {"STEP": step}}).status_code == 200
    response = api.post(f"{DEPLOYMENTS}{name}/rollback/", json={"revision": 1})
    assert response.status_code == 200, response.text

    def runs_step_1():
        containers = [c for cs in running_containers(cluster, name).values() for c in cs]
        return len(containers) == 1 and "STEP=1" in containers[0].attrs["Config"]["Env"]

    wait_for(runs_step_1, 60, lambda: f"containers {all_containers(cluster, name)}")
    assert api.post(f"{DEPLOYMENTS}{name}/rollback/", json={"revision": 9}).status_code == 400


def test_a_cut_host_is_replaced_within_15_s_and_fenced_when_it_returns(cluster, api, control_plane):
    name = unique("failover")
    h1, h2 = cluster
    create(api, name, 2, max_per_node=2)
    wait_for(lambda: all(len(v) == 1 for v in running_containers(cluster, name).values()), 60, "one per host")
    on_h1 = running_containers(cluster, name)[h1.name][0].labels["berth.replica"]
    h1.cut()
    cut_at = time.monotonic()
    try:
        wait_for(
            lambda: len(running_containers([h2], name)[h2.name]) == 2, 15, "both replicas on h2 within 15 s"
        )
        failover = time.monotonic() - cut_at
    finally:
        h1.restore()
    # Back: h1's agent reconnects, gets a desired set without its old replica, and stops it.
    wait_for(lambda: not running_containers([h1], name)[h1.name], 60, "the fenced replica stopped on h1")
    wait_for(
        lambda: on_h1 not in {r["name"] for r in replicas_of(api, name)},
        30,
        "the fenced replica's row removed",
    )
    running = running_containers(cluster, name)
    assert sum(len(v) for v in running.values()) == 2, running
    print(f"failover after a cut: {failover:.1f} s")


def test_drain_moves_replicas_and_keeps_them_available(cluster, api):
    name = unique("drain")
    h1, h2 = cluster
    create(api, name, 2, update_strategy={"type": "RollingUpdate", "max_surge": 1, "max_unavailable": 0})
    wait_for(lambda: all(len(v) == 1 for v in running_containers(cluster, name).values()), 60, "one per host")
    assert api.post(f"/api/v1/nodes/{h1.name}/drain").status_code == 202
    wait_for(
        lambda: (
            not running_containers([h1], name)[h1.name] and len(running_containers([h2], name)[h2.name]) == 2
        ),
        60,
        lambda: f"drained: {running_containers(cluster, name)}",
    )
    assert deployment(api, name)["status"]["available_replicas"] == 2
