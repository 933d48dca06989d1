"""The status reporter lets a stop wait until the frame that takes readiness off has gone out."""

from __future__ import annotations

import asyncio
import contextlib
import json

from agent.reporter import StatusReporter


def test_wait_sent_returns_once_a_frame_with_the_change_was_sent():
    async def scenario():
        reporter = StatusReporter(min_interval=0.05)
        state = {"ready": True}
        sent: list[dict] = []

        async def send(text: str) -> None:
            sent.append(json.loads(text))

        task = asyncio.create_task(reporter.run(send, lambda: dict(state)))
        try:
            reporter.mark_dirty()
            await asyncio.sleep(0.01)
            state["ready"] = False
            reporter.mark_dirty()
            await asyncio.wait_for(reporter.wait_sent(timeout=5), 1)
            assert sent[-1] == {"ready": False}  # what the waiter waited for is out
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_wait_sent_does_not_wait_without_a_connection_or_past_its_timeout():
    async def scenario():
        reporter = StatusReporter()
        reporter.mark_dirty()
        await asyncio.wait_for(reporter.wait_sent(timeout=5), 0.5)  # nobody sending: at once

        async def stuck(text: str) -> None:
            await asyncio.sleep(10)

        task = asyncio.create_task(reporter.run(stuck, dict))
        try:
            await asyncio.sleep(0.01)
            reporter.mark_dirty()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await reporter.wait_sent(timeout=0.2)
            assert 0.15 <= loop.time() - started < 1
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(scenario())
