"""The status reporter lets a stop wait until the frame that takes readiness off has gone out."""

from __future__ import annotations

import asyncio
import contextlib
import json

from agent.reporter import StatusReporter


@contextlib.asynccontextmanager
async def serving(reporter: StatusReporter, snapshot, send=None):
    """The reporter serving one connection; yields the frames it sent, decoded (unless
    `send` is given)."""
    sent: list = []

    async def record(text: str) -> None:
        sent.append(json.loads(text))

    task = asyncio.create_task(reporter.run(send or record, snapshot))
    try:
        yield sent
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_wait_sent_returns_once_a_frame_with_the_change_was_sent():
    async def scenario():
        reporter = StatusReporter(min_interval=0.05)
        state = {"ready": True}
        async with serving(reporter, lambda: dict(state)) as sent:
            reporter.mark_dirty()
            await until_sent(sent, 1)  # the change below falls in the debounce window
            state["ready"] = False
            reporter.mark_dirty()
            await asyncio.wait_for(reporter.wait_sent(timeout=5), 1)
            assert sent[-1] == {"ready": False}  # what the waiter waited for is out

    asyncio.run(scenario())


def test_wait_sent_does_not_wait_without_a_connection_or_past_its_timeout():
    async def scenario():
        reporter = StatusReporter()
        reporter.mark_dirty()
        await asyncio.wait_for(reporter.wait_sent(timeout=5), 0.5)  # nobody sending: at once

        async def stuck(text: str) -> None:
            await asyncio.sleep(10)

        async with serving(reporter, dict, send=stuck):
            await asyncio.sleep(0.01)
            reporter.mark_dirty()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await reporter.wait_sent(timeout=0.2)
            assert 0.15 <= loop.time() - started < 1

    asyncio.run(scenario())


def test_a_frame_waits_for_news_that_is_due_and_carries_it():
    async def scenario():
        reporter = StatusReporter(min_interval=0.05)
        state = {"phase": "Running", "ready": False}
        due = {"verdict": True}
        reporter.hold = lambda: 1.0 if due["verdict"] else None
        async with serving(reporter, lambda: dict(state)) as sent:
            reporter.mark_dirty()  # it runs; its first readiness check is under way
            await asyncio.sleep(0.02)
            assert sent == []  # held for the verdict
            state["ready"], due["verdict"] = True, False
            reporter.mark_dirty()
            await until_sent(sent, 1)
            await asyncio.sleep(0.08)
            assert sent == [{"phase": "Running", "ready": True}]  # one frame, with the verdict

    asyncio.run(scenario())


def test_a_frame_waits_for_due_news_no_longer_than_the_debounce_interval():
    async def scenario():
        reporter = StatusReporter(min_interval=0.05)
        reporter.hold = lambda: 10.0  # news always "due": it must not hold frames back for long
        sent: list[float] = []
        loop = asyncio.get_running_loop()

        async def send(text: str) -> None:
            sent.append(loop.time())

        async with serving(reporter, dict, send=send):
            started = loop.time()
            reporter.mark_dirty()
            await until_sent(sent, 1)
            assert 0.04 <= sent[0] - started < 0.5

    asyncio.run(scenario())


async def until_sent(sent: list, count: int, timeout: float = 2.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while len(sent) < count:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {count} frame(s); sent: {sent}")
        await asyncio.sleep(0.002)


def test_a_frame_the_same_as_the_last_one_sent_is_not_sent_again():
    async def scenario():
        reporter = StatusReporter(min_interval=0.01)
        state = {"ready": True}
        async with serving(reporter, lambda: dict(state)) as sent:
            reporter.mark_dirty()
            await until_sent(sent, 1)
            reporter.mark_dirty()  # marked, but nothing the frame shows changed
            await asyncio.wait_for(reporter.wait_sent(timeout=5), 1)  # a waiter is not kept waiting
            state["ready"] = False
            reporter.mark_dirty()
            await until_sent(sent, 2)
            await asyncio.sleep(0.05)
            assert sent == [{"ready": True}, {"ready": False}]

        # A new connection starts with a full picture, whatever the last one was sent.
        async with serving(reporter, lambda: dict(state)) as again:
            reporter.mark_dirty()
            await until_sent(again, 1)
            assert again == [{"ready": False}]

    asyncio.run(scenario())


def test_partial_frames_carry_only_what_changed_and_a_full_one_comes_when_asked():
    phases = {"a": "Starting", "b": "Starting"}
    generation = {"n": 1}

    def snapshot():
        entries = [{"namespace": "default", "name": n, "phase": p} for n, p in phases.items()]
        return {"type": "status", "generation": generation["n"], "full": True, "replicas": entries}

    async def scenario():
        reporter = StatusReporter(min_interval=0.001)
        sent: list = []

        async def record(text):
            sent.append(json.loads(text))

        task = asyncio.create_task(reporter.run(record, snapshot, partial=True))
        try:
            reporter.mark_dirty()
            await until_sent(sent, 1)  # the first frame of a connection is full
            phases["a"] = "Running"
            reporter.mark_dirty()
            await until_sent(sent, 2)
            generation["n"] = 2  # a new desired set applied, no replica changed
            reporter.mark_dirty()
            await until_sent(sent, 3)
            reporter.mark_dirty()  # nothing changed at all: nothing is sent
            await reporter.wait_sent(timeout=2)
            assert len(sent) == 3
            phases["c"] = "Starting"
            del phases["b"]
            reporter.mark_dirty()
            await until_sent(sent, 4)
            reporter.want_full()
            await until_sent(sent, 5)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return sent

    sent = asyncio.run(scenario())
    assert sent[0]["full"] is True and len(sent[0]["replicas"]) == 2
    assert sent[1] == {
        "type": "status",
        "generation": 1,
        "full": False,
        "names": [["default", "a"], ["default", "b"]],
        "replicas": [{"namespace": "default", "name": "a", "phase": "Running"}],
    }
    assert sent[2]["full"] is False and sent[2]["generation"] == 2 and sent[2]["replicas"] == []
    assert sent[3]["names"] == [["default", "a"], ["default", "c"]]  # b removed
    assert [e["name"] for e in sent[3]["replicas"]] == ["c"]
    assert sent[4]["full"] is True and [e["name"] for e in sent[4]["replicas"]] == ["a", "c"]
    assert len(sent) == 5
