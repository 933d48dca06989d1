"""The status of replicas with probes, HEALTHCHECKs and restart policies: ready, since when, and why not."""

from __future__ import annotations

from agent.probes import ContainerProbes, Exec, HttpGet, Probe, ProbeKind, ProbeState
from agent.replicas import ContainerState, Health, RestartPolicy
from agent.restarts import RestartRecord
from agent.status import Activity, Phase, describe

from .builders import NODE, have, want

NOW = 1_000_000.0
S = ContainerState
KEY = ("default", "a")
STARTED = NOW - 20
READINESS = Probe(HttpGet(port=8080, path="/healthz"), failure_threshold=1)
LIVENESS = Probe(Exec(("cat", "/tmp/alive")), failure_threshold=3)


def one(desired, observed, activities=None, restarts=None, probes=None):
    (status,) = describe(
        desired, observed, activities or {}, restarts or {}, NOW, node=NODE, probes=probes or {}
    )
    return status


def readiness_after(*results, started=STARTED):
    state = ProbeState.initial(ProbeKind.READINESS, READINESS, started)
    for i, ok in enumerate(results):
        detail = "" if ok else "HTTP GET :8080/healthz: status 503"
        state = state.after_result(ok, started + 2 + i, detail)
    return state


def view(container, readiness=None, liveness=None, health=None, health_since=None):
    return {
        container.id: ContainerProbes(
            container.id, container.started_at, readiness, liveness, health, health_since
        )
    }


def test_without_probes_a_running_container_is_ready_since_it_started():
    status = one([want("a")], [have("a", started_at=STARTED)])
    assert (status.ready, status.ready_since, status.health, status.last_exit_code) == (
        True,
        STARTED,
        None,
        None,
    )


def test_not_ready_before_the_first_readiness_success():
    running = have("a", started_at=STARTED)
    replica = want("a", readiness_probe=READINESS)
    status = one([replica], [running])  # the prober has not seen it yet
    assert (status.phase, status.ready, status.ready_since, status.message) == (
        Phase.RUNNING,
        False,
        None,
        "",
    )
    status = one([replica], [running], probes=view(running, readiness_after()))
    assert (status.ready, status.message) == (False, "")


def test_ready_since_the_readiness_probe_first_succeeded():
    running = have("a", started_at=STARTED)
    status = one(
        [want("a", readiness_probe=READINESS)], [running], probes=view(running, readiness_after(False, True))
    )
    assert (status.ready, status.ready_since, status.message) == (True, STARTED + 3, "")


def test_readiness_failure_is_in_the_message():
    running = have("a", started_at=STARTED)
    status = one(
        [want("a", readiness_probe=READINESS)], [running], probes=view(running, readiness_after(True, False))
    )
    assert (status.phase, status.ready, status.ready_since) == (Phase.RUNNING, False, None)
    assert status.message == "readiness probe failed: HTTP GET :8080/healthz: status 503"


def test_a_verdict_about_an_earlier_run_does_not_make_it_ready():
    running = have("a", started_at=STARTED)
    stale = {
        running.id: ContainerProbes(running.id, STARTED - 100, readiness_after(True, started=STARTED - 100))
    }
    assert one([want("a", readiness_probe=READINESS)], [running], probes=stale).ready is False


def test_not_ready_once_a_stop_is_decided():
    running = have("a", started_at=STARTED)
    stopping = {KEY: Activity("stopping: its replica is not desired on this node", stopping=True)}
    status = one([want("a")], [running], activities=stopping)
    assert (status.phase, status.ready, status.ready_since) == (Phase.RUNNING, False, None)
    assert one([], [running]).ready is False  # not desired: never ready


def test_not_ready_in_another_revision_or_when_not_running():
    assert one([want("a", revision="r2")], [have("a", started_at=STARTED)]).ready is False
    assert one([want("a")], [have("a", S.PAUSED, started_at=STARTED)]).ready is False
    assert one([want("a")], [have("a", S.EXITED, exit_code=0, finished_at=NOW)]).ready is False


def test_healthcheck_gates_readiness():
    starting = have("a", started_at=STARTED, health=Health.STARTING)
    status = one([want("a")], [starting])
    assert (status.ready, status.health, status.message) == (False, Health.STARTING, "health check: starting")
    healthy = have("a", started_at=STARTED, health=Health.HEALTHY)
    status = one([want("a")], [healthy], probes=view(healthy, health=Health.HEALTHY, health_since=NOW - 5))
    assert (status.ready, status.ready_since, status.health) == (True, NOW - 5, Health.HEALTHY)


def test_healthcheck_and_readiness_probe_must_both_pass():
    healthy = have("a", started_at=STARTED, health=Health.HEALTHY)
    replica = want("a", readiness_probe=READINESS)
    probes = view(healthy, readiness_after(False), health=Health.HEALTHY, health_since=NOW - 5)
    assert one([replica], [healthy], probes=probes).ready is False
    probes = view(healthy, readiness_after(True), health=Health.HEALTHY, health_since=NOW - 5)
    status = one([replica], [healthy], probes=probes)
    assert (status.ready, status.ready_since) == (True, NOW - 5)  # the later of the two


def test_liveness_failure_says_it_restarts():
    running = have("a", started_at=STARTED)
    state = ProbeState.initial(ProbeKind.LIVENESS, LIVENESS, STARTED)
    for i in range(3):
        state = state.after_result(False, STARTED + i, "exec cat /tmp/alive: exit code 1")
    replica = want("a", liveness_probe=LIVENESS)
    status = one([replica], [running], probes=view(running, liveness=state))
    assert status.message == "liveness probe failed 3 times: exec cat /tmp/alive: exit code 1; restarting now"
    record = RestartRecord(restart_count=2, streak=2, restarted_at=NOW - 5, last_exit_code=137)
    status = one([replica], [running], restarts={KEY: record}, probes=view(running, liveness=state))
    assert status.message.endswith("; restarting in 15 s")
    assert (status.restart_count, status.last_exit_code, status.exit_code) == (2, 137, None)


def test_unhealthy_without_liveness_probe_says_it_restarts():
    unhealthy = have("a", started_at=STARTED, health=Health.UNHEALTHY)
    status = one([want("a")], [unhealthy])
    assert (status.ready, status.health) == (False, Health.UNHEALTHY)
    assert status.message == "the image's HEALTHCHECK reports unhealthy; restarting now"


def test_restart_policy_messages():
    failed = have("a", S.EXITED, exit_code=1, started_at=NOW - 5, finished_at=NOW - 1)
    status = one([want("a", restart_policy=RestartPolicy.NEVER)], [failed])
    assert (status.phase, status.message) == (
        Phase.FAILED,
        "exited with code 1; restart policy never: not restarting",
    )
    assert (status.exit_code, status.last_exit_code) == (1, 1)
    done = have("a", S.EXITED, exit_code=0, started_at=NOW - 5, finished_at=NOW - 1)
    status = one([want("a", restart_policy=RestartPolicy.ON_FAILURE)], [done])
    assert (status.phase, status.message) == (
        Phase.SUCCEEDED,
        "exited with code 0; restart policy on-failure: not restarting",
    )
    status = one([want("a", restart_policy=RestartPolicy.ON_FAILURE)], [failed])
    assert (status.phase, status.message) == (Phase.FAILED, "exited with code 1; restarting in 9 s")


def test_stopped_for_liveness_under_never_is_failed_even_after_a_clean_exit():
    stopped = have("a", S.EXITED, exit_code=0, started_at=NOW - 50, finished_at=NOW - 1)
    reason = "liveness probe failed 3 times: tcp :6379: connection refused"
    record = RestartRecord(stopped_for=reason, last_exit_code=0)
    status = one([want("a", restart_policy=RestartPolicy.NEVER)], [stopped], restarts={KEY: record})
    assert status.phase == Phase.FAILED
    assert status.message == f"{reason}; stopped (exited with code 0); restart policy never: not restarting"


def test_last_exit_code_survives_a_restart():
    record = RestartRecord(restart_count=1, streak=1, last_exit_code=3)
    status = one([want("a")], [have("a", started_at=STARTED)], restarts={KEY: record})
    assert (status.phase, status.exit_code, status.last_exit_code, status.restart_count) == (
        Phase.RUNNING,
        None,
        3,
        1,
    )
    assert one([want("a")], [], restarts={KEY: record}).last_exit_code == 3
