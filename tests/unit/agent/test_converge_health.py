"""The planner's health decisions: restart policies, liveness restarts, HEALTHCHECK, stop graces."""

from __future__ import annotations

from dataclasses import replace

import pytest

from agent.converge import Remove, Replace, Restart, RestartUnhealthy, Stop, plan
from agent.probes import ContainerProbes, Exec, Probe, ProbeKind, ProbeState
from agent.replicas import GRACE_LABEL, ContainerState, Health, RestartPolicy
from agent.restarts import RestartRecord

from .builders import NODE, have, want

NOW = 1_000_000.0
S = ContainerState
KEY = ("default", "a")
LIVENESS = Probe(Exec(("cat", "/tmp/alive")), period_seconds=1, failure_threshold=2)


def exited(code: int, **kw):
    return have("a", S.EXITED, exit_code=code, started_at=NOW - 30, finished_at=NOW - 20, **kw)


def probes_of(container, *results: bool, started_at=None) -> dict[str, ContainerProbes]:
    """The prober's view of `container` after liveness results (True = success)."""
    started = container.started_at if started_at is None else started_at
    state = ProbeState.initial(ProbeKind.LIVENESS, LIVENESS, started)
    for i, ok in enumerate(results):
        state = state.after_result(ok, started + i + 1, "" if ok else "exec cat /tmp/alive: exit code 1")
    return {container.id: ContainerProbes(container.id, started, liveness=state)}


@pytest.mark.parametrize(
    ("policy", "code", "oom", "restarted"),
    [
        (RestartPolicy.ALWAYS, 0, False, True),
        (RestartPolicy.ALWAYS, 1, False, True),
        (RestartPolicy.ON_FAILURE, 0, False, False),
        (RestartPolicy.ON_FAILURE, 1, False, True),
        (RestartPolicy.ON_FAILURE, 0, True, True),  # killed for memory is a failure whatever the code
        (RestartPolicy.NEVER, 0, False, False),
        (RestartPolicy.NEVER, 1, False, False),
    ],
)
def test_restart_policy_decides_whether_an_exit_is_restarted(policy, code, oom, restarted):
    result = plan([want("a", restart_policy=policy)], [exited(code, oom_killed=oom)], NOW, {}, node=NODE)
    assert [type(a) for a in result.actions] == ([Restart] if restarted else [])
    assert result.wake_at is None  # a container left alone needs no wake-up


def test_a_start_error_is_a_failure_for_on_failure():
    broken = exited(0, error='exec: "nope": executable file not found')
    result = plan([want("a", restart_policy=RestartPolicy.ON_FAILURE)], [broken], NOW, {}, node=NODE)
    assert [type(a) for a in result.actions] == [Restart]


def test_restart_policy_keeps_the_back_off():
    result = plan(
        [want("a", restart_policy=RestartPolicy.ON_FAILURE)],
        [have("a", S.EXITED, exit_code=2, started_at=NOW - 3, finished_at=NOW - 1)],
        NOW,
        {},
        node=NODE,
    )
    assert result.actions == [] and result.wake_at == NOW + 9


def test_never_still_replaces_another_revision_and_creates_missing_containers():
    replica = want("a", revision="r2", restart_policy=RestartPolicy.NEVER)
    assert [type(a) for a in plan([replica], [exited(1)], NOW, {}, node=NODE).actions] == [Replace]
    assert plan([replica], [], NOW, {}, node=NODE).actions[0].replica == replica


def test_liveness_failure_restarts_in_place_with_the_grace():
    running = have("a", started_at=NOW - 10)
    replica = want("a", liveness_probe=LIVENESS, termination_grace_seconds=25)
    (action,) = plan(
        [replica], [running], NOW, {}, node=NODE, probes=probes_of(running, False, False)
    ).actions
    assert isinstance(action, RestartUnhealthy)
    assert action.reason == "liveness probe failed 2 times: exec cat /tmp/alive: exit code 1"
    assert action.grace == 10  # the container's own (label), which a same-revision replica shares
    labelled = replace(running, labels={**running.labels, GRACE_LABEL: "25"})
    (action,) = plan(
        [replica], [labelled], NOW, {}, node=NODE, probes=probes_of(labelled, False, False)
    ).actions
    assert action.grace == 25


@pytest.mark.parametrize(
    "results",
    [
        pytest.param((), id="not-probed-yet"),
        pytest.param((False,), id="below-the-threshold"),
        pytest.param((False, True, False), id="failures-not-in-a-row"),
    ],
)
def test_liveness_below_its_threshold_is_left_running(results):
    running = have("a", started_at=NOW - 10)
    result = plan(
        [want("a", liveness_probe=LIVENESS)],
        [running],
        NOW,
        {},
        node=NODE,
        probes=probes_of(running, *results),
    )
    assert result.actions == []


def test_a_verdict_about_an_earlier_run_is_ignored():
    running = have("a", started_at=NOW - 2)  # restarted since the probes failed
    probes = probes_of(running, False, False, started_at=NOW - 60)
    assert (
        plan([want("a", liveness_probe=LIVENESS)], [running], NOW, {}, node=NODE, probes=probes).actions == []
    )


def test_repeated_liveness_restarts_back_off():
    running = have("a", started_at=NOW - 4)
    probes = probes_of(running, False, False)
    replica = want("a", liveness_probe=LIVENESS)
    record = RestartRecord(restart_count=1, streak=1, restarted_at=NOW - 4)
    result = plan([replica], [running], NOW, {KEY: record}, node=NODE, probes=probes)
    assert result.actions == [] and result.wake_at == NOW + 6  # 10 s after the previous restart
    record = RestartRecord(restart_count=3, streak=3, restarted_at=NOW - 4)
    assert plan([replica], [running], NOW, {KEY: record}, node=NODE, probes=probes).wake_at == NOW + 36
    later = plan(
        [replica],
        [running],
        NOW + 6,
        {KEY: RestartRecord(1, 1, restarted_at=NOW - 4)},
        node=NODE,
        probes=probes,
    )
    assert [type(a) for a in later.actions] == [RestartUnhealthy]


def test_liveness_failure_under_never_stops_and_leaves_it():
    running = have("a", started_at=NOW - 10)
    replica = want("a", liveness_probe=LIVENESS, restart_policy=RestartPolicy.NEVER)
    (action,) = plan(
        [replica], [running], NOW, {}, node=NODE, probes=probes_of(running, False, False)
    ).actions
    assert isinstance(action, Stop)
    stopped = have("a", S.EXITED, exit_code=143, started_at=NOW - 10, finished_at=NOW)
    assert plan([replica], [stopped], NOW + 100, {}, node=NODE).actions == []


def test_unhealthy_healthcheck_restarts_only_without_a_liveness_probe():
    unhealthy = have("a", started_at=NOW - 30, health=Health.UNHEALTHY)
    (action,) = plan([want("a")], [unhealthy], NOW, {}, node=NODE).actions
    assert isinstance(action, RestartUnhealthy)
    assert action.reason == "the image's HEALTHCHECK reports unhealthy"
    # With a liveness probe, the probe decides; the HEALTHCHECK only gates readiness.
    probes = probes_of(unhealthy, True)
    assert (
        plan([want("a", liveness_probe=LIVENESS)], [unhealthy], NOW, {}, node=NODE, probes=probes).actions
        == []
    )
    for health in (Health.STARTING, Health.HEALTHY):
        assert plan([want("a")], [replace(unhealthy, health=health)], NOW, {}, node=NODE).actions == []


def test_removal_uses_the_grace_the_container_was_created_with():
    container = have("a")
    labelled = replace(container, labels={**container.labels, GRACE_LABEL: "45"})
    (action,) = plan([], [labelled], NOW, {}, node=NODE).actions
    assert isinstance(action, Remove) and action.grace == 45
    unlabelled = replace(container, labels={k: v for k, v in container.labels.items() if k != GRACE_LABEL})
    assert plan([], [unlabelled], NOW, {}, node=NODE).actions[0].grace == 10  # the default
    replacement = want("a", revision="r2", termination_grace_seconds=3)
    (action,) = plan([replacement], [labelled], NOW, {}, node=NODE).actions
    assert isinstance(action, Replace) and action.grace == 45  # the old container's own
    (action,) = plan([replacement], [unlabelled], NOW, {}, node=NODE).actions
    assert action.grace == 3  # unknown: the replica's


def test_labels_carry_the_grace():
    assert want("a", termination_grace_seconds=0).labels(NODE)[GRACE_LABEL] == "0"
    assert have("a").termination_grace == 10
    odd = have("a")
    assert replace(odd, labels={**odd.labels, GRACE_LABEL: "soon"}).termination_grace is None


def test_a_container_stopped_for_liveness_counts_as_failed_for_on_failure():
    # The restart in place stopped it (its TERM trap exited 0), then its start failed.
    stopped = exited(0)
    record = RestartRecord(stopped_for="liveness probe failed 2 times: ...", last_exit_code=0)
    later = NOW + 100
    on_failure = want("a", restart_policy=RestartPolicy.ON_FAILURE)
    assert [type(a) for a in plan([on_failure], [stopped], later, {KEY: record}, node=NODE).actions] == [
        Restart
    ]
    never = want("a", restart_policy=RestartPolicy.NEVER)
    assert plan([never], [stopped], later, {KEY: record}, node=NODE).actions == []
