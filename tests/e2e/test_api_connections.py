"""The control plane's database connections: API requests borrow from each process's pool
(BERTH_DB_POOL_SIZE) instead of opening a PostgreSQL session each, as they did under ASGI,
where every request runs in a thread of its own; Celery tasks too, where Celery's Django
fix-up closed the pool around every task (config/celery_db.py)."""

from __future__ import annotations

import psycopg

from tests.harness.waiting import wait_for

REQUESTS = 40
PASSES = 8


def _sessions(conn) -> int:
    """Sessions ever opened to this database, as PostgreSQL's statistics count them."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()[0]


def _opened_while(url: str, work) -> int:
    """How many database sessions the control plane opened while `work()` ran."""
    with psycopg.connect(url, autocommit=True) as watcher:
        watcher.execute("SELECT pg_stat_force_next_flush()")  # its own session counted now
        watcher.execute("SELECT 1")
        before = _sessions(watcher)
        work()
        # A session that ends flushes its statistics: once this marker's is counted, so are
        # those of sessions that ended before it began (a request's, without a pool).
        psycopg.connect(url).close()
        after = wait_for(
            lambda: (n := _sessions(watcher)) > before and n, describe="the marker session counted"
        )
    return after - before - 1


def test_api_requests_reuse_pooled_connections(api, control_plane):
    for _ in range(3):  # the pools fill up to what the web processes use at once
        assert api.get("/api/v1/nodes/").status_code == 200

    def requests():
        for _ in range(REQUESTS):
            assert api.get("/api/v1/nodes/").status_code == 200

    opened = _opened_while(control_plane.env["DATABASE_URL"], requests)
    assert opened <= 5, f"{REQUESTS} API requests opened {opened} database sessions"


def _backends(url: str, process: str) -> set[int]:
    """The PostgreSQL sessions a control-plane process holds (the harness names them)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s", [process])
        return {pid for (pid,) in rows}


def test_celery_tasks_reuse_pooled_connections(api, control_plane):
    # Each scale is a batch task in the scheduler; the worker runs the node monitor every
    # few seconds meanwhile. Celery's own fix-up closed the pool around every task: each
    # opened a session of its own (18 in this test), and none was left between tasks.
    database = control_plane.env["DATABASE_URL"]
    url = "/api/v1/namespaces/default/deployments/"
    # Replicas that fit no node: the passes run, nothing starts on the test hosts.
    body = {"name": "pooled", "image": "busybox:1", "replicas": 0, "node_selector": {"berth-test": "nowhere"}}
    assert api.post(url, json=body).status_code == 201, "creating the deployment"

    def passed(generation: int) -> bool:
        status = api.get(f"{url}pooled/").json()["status"]
        return status["observed_generation"] >= generation

    def scales():
        for replicas in range(1, PASSES + 1):
            response = api.patch(f"{url}pooled/", json={"replicas": replicas})
            assert response.status_code == 200, response.text
            generation = response.json()["generation"]
            wait_for(lambda: passed(generation), describe=f"the pass at {replicas}")  # noqa: B023

    try:
        wait_for(lambda: passed(1), describe="the first pass")  # the processes' pools are open
        kept = _backends(database, "berth-scheduler")
        opened = _opened_while(database, scales)
        after = _backends(database, "berth-scheduler")
    finally:
        api.delete(f"{url}pooled/")
    assert kept, "the scheduler keeps no database session between its tasks"
    assert after == kept, f"the scheduler's sessions changed over {PASSES} passes: {kept} then {after}"
    # Everything else borrows from pools too: a few sessions may open as the web's and the
    # worker's pools grow to what they use at once, far fewer than one per task.
    assert opened < PASSES, f"{PASSES} scheduler passes (and the monitor) opened {opened} sessions"
