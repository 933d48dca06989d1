"""nodes.heartbeats.watch_lag: a web process says when its event loop ran seconds late."""

import asyncio
import logging
import re
import time

from asgiref.sync import async_to_sync

from nodes import heartbeats


def test_a_blocked_event_loop_is_logged(monkeypatch, caplog):
    monkeypatch.setattr(heartbeats, "LAG_CHECK_SECONDS", 0.01)
    # Well above a slow machine's hiccups (the first check also opens a Redis connection).
    monkeypatch.setattr(heartbeats, "LAG_WARNING_SECONDS", 0.5)

    async def scenario():
        watcher = asyncio.get_running_loop().create_task(heartbeats.watch_lag())
        await asyncio.sleep(0.05)  # on time: nothing said
        assert "late" not in caplog.text
        time.sleep(0.8)  # the fault: the loop is blocked
        while "ran" not in caplog.text:
            await asyncio.sleep(0.01)
        watcher.cancel()

    with caplog.at_level(logging.WARNING, logger="nodes.heartbeats"):
        async_to_sync(asyncio.wait_for)(scenario(), 10)
    late = re.search(r"this web process's event loop ran ([0-9.]+) s late", caplog.text)
    assert late and float(late.group(1)) >= 0.75
