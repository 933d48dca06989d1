"""GET /api/v1/health: this web process's readiness, and whether the scheduler and the node
monitor, which run elsewhere, are doing their work."""

import time

import pytest

from nodes import heartbeats
from nodes.tasks import monitor_nodes
from orchestrator import liveness, tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def clean_marks():
    keys = (
        liveness.BATCH_QUEUED_AT,
        liveness.MONITOR_RAN_AT,
        tasks._BATCH_QUEUED,
        tasks._PENDING,
        tasks._BACKGROUND,
    )
    tasks._queued_marks().delete(*keys)
    yield
    tasks._queued_marks().delete(*keys)


def test_health_needs_no_auth_and_is_ok_once_the_monitor_has_run(client):
    monitor_nodes()  # the worker's task, as beat runs it
    response = client.get("/api/v1/health")
    body = response.json()
    assert response.status_code == 200 and body["status"] == "ok", body
    assert body["database"] == "ok" and body["redis"] == "ok" and body["problems"] == []
    assert body["node_monitor"]["status"] == "ok" and body["node_monitor"]["last_run_s_ago"] < 5


def test_a_batch_nobody_takes_makes_the_health_degraded_and_the_overview_says_what_to_do(
    client, user, monkeypatch
):
    monitor_nodes()
    queued = []
    monkeypatch.setattr(tasks.reconcile_pending, "delay", queued.append)  # no scheduler takes it
    tasks.request_reconciles([41, 42])
    assert len(queued) == 1
    marks = tasks._queued_marks()
    # As if it had been queued two minutes ago and no scheduler had started it since.
    marks.set(liveness.BATCH_QUEUED_AT, repr(time.time() - 120))

    response = client.get("/api/v1/health")
    body = response.json()
    assert response.status_code == 200  # the API still serves: only the placements wait
    assert body["status"] == "degraded" and body["scheduler"]["status"] == "stalled"
    assert body["scheduler"]["waiting_passes"] == 2
    assert "-Q scheduling" in body["problems"][0]

    client.force_login(user)
    overview = client.get("/").content.decode()
    assert 'id="problems"' in overview and "no placement batch has started for 120 s" in overview

    tasks.reconcile_pending(queued[0])  # a scheduler takes it
    assert client.get("/api/v1/health").json()["status"] == "ok"


def test_the_mark_is_cleared_by_the_batch_it_stands_for_even_when_it_starts_at_once(monkeypatch):
    # A scheduler may start the batch before the request that queued it returns.
    monkeypatch.setattr(tasks.reconcile_pending, "delay", lambda token: tasks.reconcile_pending(token))
    tasks.request_reconciles([7])  # no such deployment: the pass is a no-op
    assert tasks._queued_marks().get(liveness.BATCH_QUEUED_AT) is None


def test_a_monitor_that_stopped_long_ago_is_reported(client):
    liveness.monitor_ran(heartbeats._client(), now=time.time() - 600)
    body = client.get("/api/v1/health").json()
    assert body["status"] == "degraded" and body["node_monitor"]["status"] == "stalled"
    assert "last ran 600 s ago" in body["node_monitor"]["message"]
