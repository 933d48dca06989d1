"""The control plane's database connections: API requests borrow from each process's pool
(BERTH_DB_POOL_SIZE) instead of opening a PostgreSQL session each, as they did under ASGI,
where every request runs in a thread of its own."""

from __future__ import annotations

import psycopg

from tests.harness.waiting import wait_for

REQUESTS = 40


def _sessions(conn) -> int:
    """Sessions ever opened to this database, as PostgreSQL's statistics count them."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return conn.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()[0]


def test_api_requests_reuse_pooled_connections(api, control_plane):
    url = control_plane.env["DATABASE_URL"]
    for _ in range(3):  # the pools fill up to what the web processes use at once
        assert api.get("/api/v1/nodes/").status_code == 200
    with psycopg.connect(url, autocommit=True) as watcher:
        watcher.execute("SELECT pg_stat_force_next_flush()")  # its own session counted now
        watcher.execute("SELECT 1")
        before = _sessions(watcher)
        for _ in range(REQUESTS):
            assert api.get("/api/v1/nodes/").status_code == 200
        # A session that ends flushes its statistics: once this marker's is counted, so are
        # those of sessions that ended before it began (a request's, without a pool).
        psycopg.connect(url).close()
        after = wait_for(
            lambda: (n := _sessions(watcher)) > before and n, describe="the marker session counted"
        )
    opened = after - before - 1
    assert opened <= 5, f"{REQUESTS} API requests opened {opened} database sessions"
