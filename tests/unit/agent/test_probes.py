"""The probe state machine: initial delay, periods, failure and success thresholds, fresh runs."""

from __future__ import annotations

import pytest

from agent.probes import Exec, HttpGet, Probe, ProbeKind, ProbeState, TcpSocket

T0 = 1_000_000.0
HTTP = HttpGet(port=8080, path="/healthz")


def readiness(**kw) -> ProbeState:
    return ProbeState.initial(ProbeKind.READINESS, Probe(HTTP, **kw), T0)


def liveness(**kw) -> ProbeState:
    return ProbeState.initial(ProbeKind.LIVENESS, Probe(TcpSocket(6379), **kw), T0)


def run(state: ProbeState, results: str, start: float = T0, step: float = 1.0) -> ProbeState:
    """Feed results ("+" success, "-" failure), one every `step` seconds from `start`."""
    for i, outcome in enumerate(results):
        state = state.after_result(outcome == "+", start + i * step, "" if outcome == "+" else "status 503")
    return state


def test_readiness_is_off_until_the_first_success():
    state = readiness()
    assert not state.passing and state.since is None and not state.failed
    assert run(state, "+", start=T0 + 2).passing
    assert run(state, "+", start=T0 + 2).since == T0 + 2


def test_liveness_is_alive_until_proven_otherwise():
    state = liveness()
    assert state.passing and state.since == T0


def test_initial_delay_then_the_period():
    state = readiness(initial_delay_seconds=5, period_seconds=3)
    assert state.next_at == T0 + 5
    assert state.delay(T0) == 5
    assert state.delay(T0 + 7) == 0  # overdue: check at once
    state = state.after_result(True, T0 + 5.2)
    assert state.next_at == T0 + 8  # periods count from when the check was due, not when it ended
    assert state.delay(T0 + 5.2) == pytest.approx(2.8)


def test_a_check_that_overran_its_period_is_followed_at_once():
    state = liveness(period_seconds=1).after_result(False, T0 + 4, "timed out")
    assert state.next_at == T0 + 4 and state.delay(T0 + 4) == 0


def test_before_the_first_success_readiness_looks_again_soon_backing_off_to_the_period():
    state = readiness(period_seconds=2)
    waits = []
    now = T0
    for _ in range(25):
        state = state.after_result(False, now, "connection refused")
        waits.append(state.next_at - now)
        now = state.next_at
    assert waits == pytest.approx([0.1] * 20 + [0.2, 0.4, 0.8, 1.6, 2.0])
    ready = state.after_result(True, now)
    assert ready.passing and ready.next_at == state.next_at + 2
    # Once it has been ready, a failure waits the full period as usual.
    assert ready.after_result(False, now + 2).next_at == ready.next_at + 2


def test_delay_is_bounded_when_the_clock_jumps_back():
    state = readiness(initial_delay_seconds=2, period_seconds=10)
    assert state.delay(T0 - 3600) == 12


def test_success_threshold_needs_that_many_successes_in_a_row():
    state = readiness(success_threshold=3)
    assert not run(state, "++").passing
    assert not run(state, "++-+").passing  # a failure restarts the count
    ready = run(state, "++-+++")
    assert ready.passing and ready.since == T0 + 5


def test_readiness_goes_off_after_failure_threshold_failures_in_a_row():
    ready = run(readiness(failure_threshold=3), "+")
    assert run(ready, "--", start=T0 + 1).passing  # two failures: still ready
    assert run(ready, "--+--", start=T0 + 1).passing  # not in a row
    off = run(ready, "---", start=T0 + 1)
    assert not off.passing and off.failed and off.since == T0 + 3
    assert off.failure_message() == "readiness probe failed: status 503"
    back = run(off, "+", start=T0 + 4)
    assert back.passing and back.since == T0 + 4 and back.detail == "" and back.failures == 0


def test_liveness_fails_after_failure_threshold_failures_in_a_row():
    state = liveness(failure_threshold=3)
    assert not run(state, "--").failed
    assert not run(state, "--+--").failed
    dead = run(state, "---")
    assert dead.failed and not dead.passing
    assert dead.failure_message() == "liveness probe failed 3 times: status 503"
    assert (
        run(liveness(failure_threshold=1), "-").failure_message()
        == "liveness probe failed 1 time: status 503"
    )


def test_a_new_container_run_starts_over():
    dead = run(liveness(failure_threshold=1), "-")
    fresh = ProbeState.initial(ProbeKind.LIVENESS, dead.probe, T0 + 30)
    assert fresh.passing and fresh.failures == 0 and fresh.checks == 0 and fresh.next_at == T0 + 30


def test_handlers_describe_themselves():
    assert HTTP.describe() == "HTTP GET :8080/healthz"
    assert TcpSocket(6379).describe() == "tcp :6379"
    assert Exec(("cat", "/tmp/alive")).describe() == "exec cat /tmp/alive"
    assert Exec(("sh", "-c", "x" * 100)).describe().endswith("...")
