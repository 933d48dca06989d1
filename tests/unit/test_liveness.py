"""The health check's verdicts on the background processes (orchestrator/liveness.py)."""

import pytest

from orchestrator.liveness import judge

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("queued_at", "waiting", "scheduler"),
    [
        (None, 0, "ok"),  # idle: nothing queued
        (None, 5, "ok"),  # a batch is running (it cleared the mark) with more waiting
        (NOW - 10, 3, "ok"),  # queued a moment ago
        (NOW - 60, 3, "ok"),  # at the limit
        (NOW - 61, 3, "stalled"),  # nobody took it
    ],
)
def test_the_scheduler_is_stalled_only_when_a_queued_batch_waits_past_the_limit(
    queued_at, waiting, scheduler
):
    verdict = judge(
        NOW, batch_queued_at=queued_at, monitor_ran_at=NOW, waiting_passes=waiting, monitor_stall=10
    )
    assert verdict["scheduler"]["status"] == scheduler
    assert verdict["scheduler"]["waiting_passes"] == waiting
    if scheduler == "stalled":
        assert "61 s" in verdict["scheduler"]["message"]
        assert "celery -A config worker -Q scheduling" in verdict["scheduler"]["message"]
    else:
        assert "message" not in verdict["scheduler"]


@pytest.mark.parametrize(
    ("ran_at", "monitor", "words"),
    [
        (NOW - 1, "ok", None),
        (NOW - 10, "ok", None),
        (NOW - 11, "stalled", "last ran 11 s ago"),
        (None, "stalled", "has not run since Redis started"),
    ],
)
def test_the_node_monitor_is_stalled_when_its_last_pass_is_too_old(ran_at, monitor, words):
    verdict = judge(NOW, batch_queued_at=None, monitor_ran_at=ran_at, waiting_passes=0, monitor_stall=10)
    assert verdict["node_monitor"]["status"] == monitor
    if words:
        assert words in verdict["node_monitor"]["message"]
        assert "celery -A config beat" in verdict["node_monitor"]["message"]
