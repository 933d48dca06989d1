"""What the control plane is told about each replica: phase and a message a human can act on."""

from __future__ import annotations

from agent.replicas import ContainerState, Resources
from agent.restarts import RestartRecord
from agent.status import Activity, Phase, describe

from .builders import NODE, foreign, have, want

NOW = 1_000_000.0
S = ContainerState
KEY = ("default", "a")


def one(desired, observed, activities=None, restarts=None):
    (status,) = describe(desired, observed, activities or {}, restarts or {}, NOW, node=NODE)
    return status


def test_running():
    status = one([want("a")], [have("a", started_at=NOW - 3)])
    assert (status.phase, status.message, status.started_at) == (Phase.RUNNING, "", NOW - 3)
    assert status.exit_code is None and status.finished_at is None


def test_running_hides_the_previous_exit_time():
    status = one([want("a")], [have("a", started_at=NOW - 3, finished_at=NOW - 4)])
    assert status.finished_at is None


def test_exit_waiting_in_back_off_says_when_it_restarts():
    exited = have("a", S.EXITED, exit_code=1, started_at=NOW - 2, finished_at=NOW)
    status = one([want("a")], [exited], restarts={KEY: RestartRecord(restart_count=1, streak=1)})
    assert status.phase == Phase.FAILED
    assert status.message == "exited with code 1; restarting in 20 s"
    assert (status.exit_code, status.restart_count, status.finished_at) == (1, 1, NOW)


def test_exit_zero_is_succeeded():
    status = one([want("a")], [have("a", S.EXITED, exit_code=0, started_at=NOW - 2, finished_at=NOW - 1)])
    assert status.phase == Phase.SUCCEEDED
    assert status.message == "exited with code 0; restarting in 9 s"


def test_killed_by_signal_and_out_of_memory():
    killed = have("a", S.EXITED, exit_code=137, finished_at=NOW)
    assert one([], [killed]).message == "exited with code 137 (SIGKILL)"
    oom = have("a", S.EXITED, exit_code=137, oom_killed=True, finished_at=NOW)
    replica = want("a", resources=Resources(memory_bytes=64 << 20))
    assert one([replica], [oom]).message.startswith("killed: out of memory (limit 64 MiB); restarting in")


def test_start_error_from_the_engine():
    broken = have(
        "a", S.EXITED, exit_code=127, error='exec: "nope": executable file not found', finished_at=NOW
    )
    status = one([want("a")], [broken])
    assert status.phase == Phase.FAILED
    assert status.message.startswith(
        'failed to start: exec: "nope": executable file not found; restarting in'
    )


def test_pull_failure_without_container():
    error = "image not found: berth-test/x:1 (pull failed: no such host)"
    record = RestartRecord(failures=1, error=error, failed_at=NOW - 4)
    status = one([want("a")], [], restarts={KEY: record})
    assert (status.phase, status.container_id) == (Phase.FAILED, None)
    assert status.message == f"{error}; retrying in 6 s"


def test_in_flight_actions_are_starting():
    assert one([want("a")], [], {KEY: Activity("pulling image x:1")}).phase == Phase.STARTING
    assert one([want("a")], [], {KEY: Activity("pulling image x:1")}).message == "pulling image x:1"
    assert one([want("a")], [have("a", S.CREATED)], {KEY: Activity("starting")}).phase == Phase.STARTING
    assert one([want("a")], []).phase == Phase.STARTING


def test_running_container_is_running_even_while_its_start_action_finishes():
    assert one([want("a")], [have("a")], {KEY: Activity("starting")}).phase == Phase.RUNNING


def test_container_being_removed_keeps_its_phase():
    status = one([], [have("a")], {KEY: Activity("stopping: not desired", stopping=True)})
    assert (status.phase, status.message) == (Phase.RUNNING, "stopping: not desired")


def test_only_own_containers_and_desired_replicas_are_reported():
    observed = [have("a"), have("b", node="h2", cid="x"), foreign("default_c", "y")]
    statuses = describe([want("d")], observed, {}, {}, NOW, node=NODE)
    assert [(s.namespace, s.name) for s in statuses] == [("default", "a"), ("default", "d")]


def test_before_the_first_desired_frame_containers_are_reported_as_they_are():
    statuses = describe(None, [have("a", S.EXITED, exit_code=2, finished_at=NOW)], {}, {}, NOW, node=NODE)
    assert [(s.phase, s.message) for s in statuses] == [(Phase.FAILED, "exited with code 2")]


def test_a_memo_keeps_the_status_of_an_unchanged_replica_and_redescribes_a_changed_one():
    memo = {}
    desired = [want("a"), want("b")]
    a, b = have("a", started_at=NOW - 3), have("b", S.CREATED)

    def run(*observed, wanted=desired):
        return describe(wanted, observed, {}, {}, NOW, node=NODE, memo=memo)

    first = run(a, b)
    again = run(a, b)
    assert again[0] is first[0] and again[1] is first[1]  # nothing changed: the same objects
    started = have("b", started_at=NOW - 1)
    changed = run(a, started)
    assert changed[0] is first[0]
    assert changed[1] is not first[1]
    assert (changed[1].phase, changed[1].started_at) == (Phase.RUNNING, NOW - 1)
    assert run(a)[1].message == "waiting to be created"  # its container went
    assert [s.name for s in run(a, wanted=[want("a")])] == ["a"] and set(memo) == {KEY}  # b went


def test_a_memo_never_keeps_a_countdown():
    memo = {}
    exited = have("a", S.EXITED, exit_code=1, started_at=NOW - 2, finished_at=NOW)
    restarts = {KEY: RestartRecord(restart_count=1, streak=1)}

    def message(now):
        (status,) = describe([want("a")], [exited], {}, restarts, now, node=NODE, memo=memo)
        return status.message

    assert message(NOW) == "exited with code 1; restarting in 20 s"
    assert message(NOW + 5) == "exited with code 1; restarting in 15 s"
    assert message(NOW + 30) == "exited with code 1; restarting now"
