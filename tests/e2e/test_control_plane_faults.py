"""Control-plane faults (issue 4, item 8): a Celery worker killed with SIGKILL in the middle of
a rollout, PostgreSQL restarted, Redis restarted empty (or flushed), the web server
restarted. Each time the system converges again to exactly the desired replicas, the agents
reconnect by themselves (the same agent processes), what the user declared is all there, and
no replica is ever started twice: every replica has had one container for its whole life
(adopted, never re-created), and no moment had two containers for one replica.

The engines are watched in a thread for the whole test (EngineWatch), so a duplicate that
came and went between two checks is caught too. PostgreSQL and Redis are the session's
(shared with the integration tests and the rest of e2e): each test leaves them running.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import defaultdict
from datetime import UTC, datetime

import docker
import pytest
import redis

from tests.e2e.cluster import create, node_status, parse_time, replicas_of, unique
from tests.harness.controlplane import REDIS_DB
from tests.harness.waiting import wait_for

REPLICAS = 4
OUTAGE_S = 3.0  # how long PostgreSQL stays down
CONVERGE_S = 45  # the resync (every BERTH_RESYNC_INTERVAL_SECONDS) is the last safety net


class EngineWatch:
    """Lists one deployment's containers in every host's engine, over and over, in a thread.

    Remembers every container id each replica ever had, and every sample in which one
    replica had two containers (on one engine or across engines).
    """

    def __init__(self, hosts, deployment: str, period: float = 0.2) -> None:
        self.deployment = deployment
        self.period = period
        # Clients of our own: docker-py clients are not shared across threads.
        self.clients = {
            h.name: docker.APIClient(base_url=h.docker_url, version="auto", timeout=30) for h in hosts
        }
        self.ids: dict[str, set[str]] = defaultdict(set)
        self.doubles: list[tuple[float, str, list[str]]] = []
        self.errors: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="engine-watch", daemon=True)
        self._lock = threading.Lock()

    def snapshot(self) -> list[dict]:
        """[{host, id, name, replica, revision, state}] of this deployment, all engines."""
        seen = []
        for host, client in self.clients.items():
            for c in client.containers(all=True, filters={"label": f"berth.deployment={self.deployment}"}):
                seen.append(
                    {
                        "host": host,
                        "id": c["Id"],
                        "name": c["Names"][0].lstrip("/") if c["Names"] else "",
                        "replica": c["Labels"].get("berth.replica", ""),
                        "revision": c["Labels"].get("berth.revision", ""),
                        "state": c["State"],
                    }
                )
        return seen

    def _record(self, seen: list[dict]) -> None:
        per_replica = defaultdict(list)
        for c in seen:
            per_replica[c["replica"]].append(c["id"])
        with self._lock:
            self.samples += 1
            for replica, ids in per_replica.items():
                self.ids[replica].update(ids)
                if len(ids) > 1:
                    self.doubles.append((time.monotonic(), replica, ids))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._record(self.snapshot())
            except Exception as exc:  # an engine hiccup is not a finding; keep the last few
                self.errors = [*self.errors[-4:], repr(exc)]
            self._stop.wait(self.period)

    def __enter__(self) -> EngineWatch:
        self._record(self.snapshot())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)
        for client in self.clients.values():
            client.close()

    def assert_never_started_twice(self) -> None:
        with self._lock:
            assert self.samples > 1, f"the engines were not watched ({self.samples}; errors {self.errors})"
            assert not self.doubles, f"replicas with two containers at once: {self.doubles[:5]}"
            restarted = {r: sorted(ids) for r, ids in self.ids.items() if len(ids) > 1}
            assert not restarted, f"replicas started more than once (container ids over time): {restarted}"


def converged(api, watch: EngineWatch, name: str, desired: int, revisions: int = 1):
    """None, or the running containers when everything agrees on `desired` replicas: exactly
    that many containers in the engines (all running, one per replica, names unique), the
    API's replicas all Running on those containers, and the deployment's status complete."""
    seen = watch.snapshot()
    if len(seen) != desired or any(c["state"] != "running" for c in seen):
        return None
    if len({c["replica"] for c in seen}) != desired or len({c["name"] for c in seen}) != desired:
        return None
    if len({c["revision"] for c in seen}) != revisions:
        return None
    replicas = replicas_of(api, name)
    by_name = {r["name"]: r for r in replicas}
    if len(replicas) != desired or set(by_name) != {c["replica"] for c in seen}:
        return None
    for c in seen:
        replica = by_name[c["replica"]]
        if (
            replica["phase"] != "Running"
            or replica["container_id"] != c["id"]
            or replica["node"] != c["host"]
        ):
            return None
        if replica["revision"] != c["revision"]:
            return None
    deployment = api.get(f"/api/v1/namespaces/default/deployments/{name}/").json()
    status = deployment["status"]
    if (status["replicas"], status["ready_replicas"], status["available_replicas"]) != (desired,) * 3:
        return None
    if status["observed_generation"] != deployment["generation"]:
        return None
    return seen


def wait_converged(api, watch, name, desired, started: float, what: str) -> float:
    """Wait for converged(); returns the seconds since `started` (the fault)."""
    wait_for(
        lambda: converged(api, watch, name, desired),
        CONVERGE_S,
        lambda: (
            f"{what}: {desired} replicas converged; engines: {watch.snapshot()}; "
            f"API: {[(r['name'], r['node'], r['phase'], r['message']) for r in replicas_of(api, name)]}; "
            f"status: {api.get(f'/api/v1/namespaces/default/deployments/{name}/').json().get('status')}"
        ),
        max_interval=0.3,
    )
    elapsed = time.monotonic() - started
    print(f"{what}: converged {elapsed:.2f} s after the fault")
    return elapsed


def patch(api, name, **changes):
    """A spec change through the API; retried while the control plane is still recovering
    (5xx or no answer), as a user or a CI job would."""

    def attempt():
        response = api.patch(f"/api/v1/namespaces/default/deployments/{name}/", json=changes, timeout=5)
        assert response.status_code < 500, response.text
        return response

    response = wait_for(attempt, 30, f"PATCH {name} {changes} to be answered")
    assert response.status_code == 200, response.text
    return response.json()


def containers_by_replica(seen):
    return {c["replica"]: c["id"] for c in seen}


def assert_agents_reconnected(api, hosts, agent_pids):
    """The same agent processes, their nodes Ready again: they reconnected by themselves."""
    wait_for(
        lambda: all(node_status(api, h.name) == "Ready" for h in hosts),
        20,
        lambda: f"nodes Ready: {[(h.name, node_status(api, h.name)) for h in hosts]}",
    )
    assert {h.name: h.agent.pid for h in hosts if h.agent_running} == agent_pids


def assert_declared(api, name, **spec):
    deployment = api.get(f"/api/v1/namespaces/default/deployments/{name}/").json()
    for field, value in spec.items():
        assert deployment[field] == value, f"{field}: declared {value!r}, the API has {deployment[field]!r}"


@pytest.fixture
def faulty(cluster, control_plane, berth_services):
    """The cluster; afterwards, whatever the test did, the shared PostgreSQL and Redis and the
    control plane's processes run again (the rest of the session depends on them)."""
    yield cluster
    berth_services.ensure_running()
    control_plane.ensure_running()


def _start(api, hosts, name) -> tuple[dict, EngineWatch]:
    create(api, name, REPLICAS)
    watch = EngineWatch(hosts, name)
    seen = wait_for(
        lambda: converged(api, watch, name, REPLICAS), 30, f"{REPLICAS} replicas of {name} running"
    )
    return containers_by_replica(seen), watch


def _pool_children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as handle:
        return [int(child) for child in handle.read().split()]


def test_worker_killed_mid_rollout(faulty, api, control_plane):
    """The scheduler (the Celery worker that runs the passes) dies in the middle of a rollout,
    holding work: its pool is frozen first, so at the kill it is inside a reconcile (a
    transaction open, row locks held) or holds the reserved, unacknowledged task for a second
    rollout declared meanwhile (lost with it, its "queued" mark left behind in Redis). A new
    one starts, as a supervisor would start one."""
    hosts = faulty
    name = unique("wkill")
    agent_pids = {h.name: h.agent.pid for h in hosts}
    before, watch = _start(api, hosts, name)
    broker = redis.Redis.from_url(control_plane.env["REDIS_URL"].rsplit("/", 1)[0] + f"/{REDIS_DB}")
    first_revision = {c["revision"] for c in watch.snapshot()}
    with watch:
        patch(api, name, env={"ROLLOUT": "1"})
        # Mid-rollout: a replica of the new revision runs, the old ones still do.
        wait_for(
            lambda: any(
                c["revision"] not in first_revision and c["state"] == "running" for c in watch.snapshot()
            ),
            20,
            lambda: f"a new replica running: {watch.snapshot()}",
        )
        scheduler = control_plane.procs["scheduler"]
        for child in _pool_children(scheduler.pid):  # the pool stops; the main process still takes tasks
            os.kill(child, signal.SIGSTOP)
        # The second change may wait for a row lock a frozen reconcile holds: send it aside.
        second: dict = {}
        sender = threading.Thread(target=lambda: second.update(patch(api, name, env={"ROLLOUT": "2"})))
        sender.start()
        # The scheduler holds a reconcile: running in a frozen child (its transaction open) or
        # reserved by the main process; unacknowledged either way, lost with the worker.
        wait_for(
            lambda: any(b"orchestrator.reconcile_" in m for m in broker.hvals("unacked")),
            10,
            lambda: f"the scheduler to hold a reconcile; it holds {broker.hvals('unacked')}",
        )
        held = broker.hlen("unacked")
        started = time.monotonic()
        control_plane.kill("scheduler", signal.SIGKILL)
        sender.join(30)
        assert second, "the second change was answered once the killed worker's locks went"
        control_plane.start_process("scheduler")
        recovered = wait_converged(
            api, watch, name, REPLICAS, started, f"scheduler killed holding {held} task(s)"
        )
    watch.assert_never_started_twice()
    assert_declared(api, name, env={"ROLLOUT": "2"}, replicas=REPLICAS, generation=second["generation"])
    final = containers_by_replica(watch.snapshot())
    assert not set(final) & set(before), "the first revision's replicas are all gone"
    assert len({c["revision"] for c in watch.snapshot()}) == 1
    assert_agents_reconnected(api, hosts, agent_pids)
    print(f"worker_kill: converged_s={recovered:.2f}")


def _after_fault(api, hosts, watch, name, before, agent_pids, started, what, desired=REPLICAS):
    """Common end of the restart tests: `desired` replicas converge, those that ran before the
    fault still run in the very same containers, a change declared as soon as the API answers
    again is carried out, the agents are back, and no node went NotReady on the way.
    Returns the seconds from the fault to convergence, and to the later change running."""
    recovered = wait_converged(api, watch, name, desired, started, what)
    now = containers_by_replica(watch.snapshot())
    assert {r: now.get(r) for r in before} == before, "the same containers, adopted"
    declared = patch(api, name, replicas=desired + 1)
    wait_converged(api, watch, name, desired + 1, started, f"{what}, then scaled up")
    changed = time.monotonic() - started
    now = containers_by_replica(watch.snapshot())
    assert {r: now.get(r) for r in before} == before
    watch.assert_never_started_twice()
    assert_declared(api, name, replicas=desired + 1, generation=declared["generation"])
    assert_agents_reconnected(api, hosts, agent_pids)
    return recovered, changed


def welcomes(host) -> int:
    """How many sessions the host's agent has had welcomed (from its log)."""
    return host.agent_log.read_text(errors="replace").count("welcomed as node")


def wait_reconnected(hosts, welcomed, started, what) -> float:
    wait_for(
        lambda: all(welcomes(h) > welcomed[h.name] for h in hosts),
        20,
        lambda: f"every agent welcomed again: {[(h.name, h.agent_output(8)) for h in hosts]}",
    )
    elapsed = time.monotonic() - started
    print(f"{what}: agents reconnected {elapsed:.2f} s after the fault")
    return elapsed


def not_ready_events(api, hosts, since):
    found = []
    for host in hosts:
        events = api.get("/api/v1/events/", params={"kind": "Node", "name": host.name}).json()["results"]
        found += [
            (host.name, e["message"])
            for e in events
            if e["reason"] == "NodeNotReady" and parse_time(e["last_seen"]) >= since
        ]
    return found


def test_postgres_restart(faulty, api, control_plane, berth_services):
    """A scale-up is declared, and PostgreSQL goes away for a few seconds while it is being
    carried out: the agents report their new containers into the outage."""
    hosts = faulty
    name = unique("pgrs")
    agent_pids = {h.name: h.agent.pid for h in hosts}
    before, watch = _start(api, hosts, name)
    since = datetime.now(UTC)
    with watch:
        patch(api, name, replicas=REPLICAS + 2)
        # The agents got the new set: their reports on the new containers run into the outage.
        wait_for(lambda: len(watch.snapshot()) > REPLICAS, 10, lambda: f"a new container: {watch.snapshot()}")
        started = time.monotonic()
        down = berth_services.restart_postgres(down_for=OUTAGE_S)
        print(f"PostgreSQL was unreachable {down:.2f} s")
        recovered, changed = _after_fault(
            api, hosts, watch, name, before, agent_pids, started, "PostgreSQL restarted", REPLICAS + 2
        )
    assert not_ready_events(api, hosts, since) == []
    print(f"postgres_restart: converged_s={recovered:.2f} next_change_running_s={changed:.2f}")


@pytest.mark.parametrize("how", ["restart", "flushall"])
def test_redis_loses_everything(faulty, api, control_plane, berth_services, how):
    """`restart`: killed, unreachable for a second, started empty (it persists nothing): the
    agents' sessions break and they reconnect. `flushall`: the same loss with every connection
    kept, so no broken socket tells: channel groups, queued tasks, heartbeats are just gone."""
    hosts = faulty
    name = unique("redis")
    agent_pids = {h.name: h.agent.pid for h in hosts}
    before, watch = _start(api, hosts, name)
    since = datetime.now(UTC)
    welcomed = {h.name: welcomes(h) for h in hosts}
    with watch:
        started = time.monotonic()
        if how == "restart":
            down = berth_services.restart_redis(down_for=1.0)
            print(f"Redis was unreachable {down:.2f} s")
            wait_reconnected(hosts, welcomed, started, "Redis restarted")
        else:
            assert berth_services.redis.command("FLUSHALL").startswith(b"+OK")
        recovered, changed = _after_fault(
            api, hosts, watch, name, before, agent_pids, started, f"Redis {how}"
        )
    assert not_ready_events(api, hosts, since) == []
    print(f"redis_{how}: converged_s={recovered:.2f} next_change_running_s={changed:.2f}")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_web_server_restart(faulty, api, control_plane, sig):
    """The agents' sessions end with the web server (cut dead, or closed with 1012 "service
    restart"); they reconnect by themselves and get their whole desired set again."""
    hosts = faulty
    name = unique("webrs")
    agent_pids = {h.name: h.agent.pid for h in hosts}
    before, watch = _start(api, hosts, name)
    since = datetime.now(UTC)
    welcomed = {h.name: welcomes(h) for h in hosts}
    with watch:
        started = time.monotonic()
        control_plane.restart("web", sig)
        print(f"web server answering again {time.monotonic() - started:.2f} s after the {sig.name}")
        wait_reconnected(hosts, welcomed, started, f"web {sig.name}")
        recovered, changed = _after_fault(
            api, hosts, watch, name, before, agent_pids, started, f"web {sig.name}"
        )
    assert not_ready_events(api, hosts, since) == []
    print(f"web_{sig.name.lower()}: converged_s={recovered:.2f} next_change_running_s={changed:.2f}")
