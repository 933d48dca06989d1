"""The agent's reconciler over the in-memory FakeRuntime (the hollow nodes' engine).

The reconciler is the real one; only the engine is in memory. A shared fake clock decides
every timestamp, so restart back-off is checked by moving the clock, not by sleeping. The
reconciler wakes itself with real timers, so after moving the clock a test sends the
desired set again (as the control plane does on every connect) to make it look.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import pytest

from agent.protocol import hello_frame
from agent.reconciler import Reconciler
from agent.replicas import ContainerState, Resources
from agent.runtime import MAX_IMAGES, RESYNC, ContainerEvent
from agent.runtime.fake import FakeRuntime
from agent.status import Phase
from tests.unit.agent.builders import NODE, foreign, have, want

IMAGE = "berth-test/busybox:1"


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(condition: Callable[[], object], what: str, timeout: float = 5.0) -> None:
    """Wait for `condition` (checked as the loop turns); fail with what was seen."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)


async def settle() -> None:
    """Let every ready callback and task run until nothing is left to do right now."""
    for _ in range(50):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def running(reconciler: Reconciler):
    task = asyncio.create_task(reconciler.run())
    try:
        yield reconciler
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def phases(reconciler: Reconciler) -> dict[str, Phase]:
    return {s.name: s.phase for s in reconciler.statuses()}


def status_of(reconciler: Reconciler, name: str):
    return next(s for s in reconciler.statuses() if s.name == name)


def make(clock: FakeClock | None = None, **kw) -> tuple[FakeRuntime, Reconciler]:
    clock = clock or FakeClock()
    fake = FakeRuntime(NODE, images=[IMAGE], clock=clock, **kw)
    return fake, Reconciler(fake, NODE, clock=clock)


def test_converges_to_the_desired_set_and_scales_down():
    async def scenario():
        fake, reconciler = make()
        async with running(reconciler):
            reconciler.apply_desired(1, [want("a"), want("b"), want("c")])
            await until(lambda: fake.running() == {"default_a", "default_b", "default_c"}, "3 running")
            await until(lambda: set(phases(reconciler).values()) == {Phase.RUNNING}, "3 reported Running")

            reconciler.apply_desired(2, [want("b")])
            await until(lambda: fake.running() == {"default_b"}, "a and c removed")
            assert [c.name for c in fake.containers()] == ["default_b"]
            await until(lambda: phases(reconciler) == {"b": Phase.RUNNING}, "only b reported")

    asyncio.run(scenario())


def test_adopts_its_containers_after_a_restart_without_duplicates():
    async def scenario():
        clock = FakeClock()
        fake, first = make(clock)
        foreign_container = foreign("someone-elses", "f" * 64)
        fake.add(foreign_container)
        async with running(first):
            first.apply_desired(4, [want("a"), want("b")])
            await until(lambda: len(fake.running()) == 3, "a and b running beside the foreign one")
        ids = {c.name: c.id for c in fake.containers()}

        # The agent restarts: a new reconciler over the same engine, told the same set again.
        second = Reconciler(fake, NODE, clock=clock)
        async with running(second):
            await until(lambda: second.ready, "the first full list")
            second.apply_desired(4, [want("a"), want("b")])
            await until(lambda: set(phases(second).values()) == {Phase.RUNNING}, "both adopted as Running")
            await settle()
            assert {c.name: c.id for c in fake.containers()} == ids  # nothing created or removed

            second.apply_desired(5, [want("a")])
            await until(lambda: "default_b" not in fake.running(), "b removed after the restart")
            assert fake.running() == {"default_a", "someone-elses"}  # never touches what is not ours

    asyncio.run(scenario())


def test_exited_container_restarts_with_back_off():
    async def scenario():
        clock = FakeClock()
        fake, reconciler = make(clock)
        desired = [want("a")]

        def nudge() -> None:
            reconciler.apply_desired(reconciler.generation, desired)

        async with running(reconciler):
            reconciler.apply_desired(1, desired)
            await until(lambda: fake.running() == {"default_a"}, "a running")

            clock.advance(5)
            fake.crash("default_a", exit_code=3)
            await until(lambda: phases(reconciler) == {"a": Phase.FAILED}, "a Failed")
            assert status_of(reconciler, "a").message == "exited with code 3; restarting in 10 s"

            clock.advance(9.9)
            nudge()
            await settle()
            assert fake.running() == set(), "restarted before its 10 s back-off"

            clock.advance(0.2)
            nudge()
            await until(lambda: fake.running() == {"default_a"}, "a restarted after 10 s")
            await until(lambda: status_of(reconciler, "a").restart_count == 1, "restart counted")

            # A second exit soon after waits twice as long.
            clock.advance(1)
            fake.crash("default_a", exit_code=0)
            await until(lambda: phases(reconciler) == {"a": Phase.SUCCEEDED}, "a Succeeded")
            assert status_of(reconciler, "a").message == "exited with code 0; restarting in 20 s"
            clock.advance(19.9)
            nudge()
            await settle()
            assert fake.running() == set(), "restarted before its 20 s back-off"
            clock.advance(0.2)
            nudge()
            await until(lambda: fake.running() == {"default_a"}, "a restarted after 20 s")
            await until(lambda: status_of(reconciler, "a").restart_count == 2, "second restart counted")
            assert len(fake.containers()) == 1  # restarted in place, not re-created

    asyncio.run(scenario())


def test_failed_start_is_retried_on_the_back_off_schedule():
    async def scenario():
        clock = FakeClock()
        fake, reconciler = make(clock)
        fake.fail_next("start", "failed to start: no space left on device")
        desired = [want("a")]
        async with running(reconciler):
            reconciler.apply_desired(1, desired)
            await until(lambda: phases(reconciler) == {"a": Phase.FAILED}, "a Failed")
            assert "no space left on device; retrying in 10 s" in status_of(reconciler, "a").message
            clock.advance(10.1)
            reconciler.apply_desired(1, desired)
            await until(lambda: phases(reconciler) == {"a": Phase.RUNNING}, "a Running after the retry")

    asyncio.run(scenario())


def test_pulls_missing_images_and_reports_unpullable_ones():
    async def scenario():
        fake, reconciler = make(pullable=lambda image: not image.startswith("missing/"))
        async with running(reconciler):
            reconciler.apply_desired(1, [want("a", image="hollow/app:2"), want("b", image="missing/app:1")])
            await until(lambda: fake.running() == {"default_a"}, "a running from a pulled image")
            await until(lambda: phases(reconciler).get("b") == Phase.FAILED, "b Failed")
        assert fake.images == (IMAGE, "hollow/app:2")
        assert status_of(reconciler, "b").message.startswith("image not found: missing/app:1")
        assert status_of(reconciler, "b").container_id is None

    asyncio.run(scenario())


def test_engine_info_and_events_look_like_a_real_engine():
    async def scenario():
        clock = FakeClock()
        fake = FakeRuntime(
            NODE,
            cpu_millis=16000,
            memory_bytes=32 << 30,
            images=[f"img/{i}:1" for i in range(600)],
            clock=clock,
        )
        info = await fake.engine_info()
        assert (info.version, info.cpu_millis, info.memory_bytes) == ("hollow", 16000, 32 << 30)
        assert len(info.images) == MAX_IMAGES
        assert hello_frame(info, {})["images"][:2] == ["img/0:1", "img/1:1"]

        seen: list[ContainerEvent] = []

        async def watch():
            async for event in fake.events():
                seen.append(event)

        watcher = asyncio.create_task(watch())
        await settle()
        cid = await fake.create(want("a", image="img/0:1", resources=Resources(250, 64 << 20)))
        await fake.start(cid)
        clock.advance(3)
        await fake.remove(cid)
        await fake.remove(cid)  # already gone: not an error
        assert await fake.list_owned() == [] and fake.containers() == []
        await fake.close()
        await asyncio.wait_for(watcher, 1)
        assert [e.action for e in seen] == [RESYNC, "create", "start", "die", "destroy"]
        assert all(e.container_id == cid for e in seen[1:])

    asyncio.run(scenario())


def test_name_conflict_hands_back_the_existing_container():
    async def scenario():
        fake, reconciler = make()
        stray = have("a", ContainerState.EXITED, cid="e" * 64)
        fake.add(stray)
        async with running(reconciler):
            reconciler.apply_desired(1, [want("a")])
            await until(lambda: fake.running() == {"default_a"}, "the existing container started")
        assert [c.id for c in fake.containers()] == ["e" * 64]

    asyncio.run(scenario())


def test_fail_next_names_a_known_operation():
    with pytest.raises(ValueError, match="operation"):
        FakeRuntime(NODE).fail_next("pull", "x")
