"""The reconciler's probes, liveness restarts and graceful stops over the in-memory FakeRuntime.

The reconciler and its prober are the real ones; the fake engine answers probes itself
(success unless a test says otherwise). Probe periods are real seconds (at least 1), so
these tests use failure thresholds of 1 and probes that are due at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

from agent.probes import Exec, HttpGet, Probe
from agent.reconciler import START_NEWS_WAIT, Reconciler
from agent.replicas import ContainerState, Health, RestartPolicy
from agent.reporter import StatusReporter
from agent.runtime.fake import FakeRuntime
from agent.status import Activity, Phase
from tests.unit.agent.builders import NODE, want
from tests.unit.agent.test_fake_runtime import IMAGE, FakeClock, running, settle, status_of, until

READINESS = Probe(HttpGet(port=8080, path="/healthz"), period_seconds=1, failure_threshold=1)
LIVENESS = Probe(Exec(("cat", "/tmp/alive")), period_seconds=1, failure_threshold=1)


def make(**kw):
    clock = FakeClock()
    fake = FakeRuntime(NODE, images=[IMAGE], clock=clock)
    changes = []
    reconciler = Reconciler(fake, NODE, clock=clock, on_change=lambda: changes.append(1), **kw)
    return clock, fake, reconciler, changes


def test_readiness_follows_the_probe():
    async def scenario():
        _clock, fake, reconciler, changes = make()
        fake.fail_probes("default_a", "connection refused")
        async with running(reconciler):
            reconciler.apply_desired(1, [want("a", readiness_probe=READINESS)])
            await until(lambda: status_of(reconciler, "a").phase == Phase.RUNNING, "a Running")
            await until(lambda: status_of(reconciler, "a").message != "", "the first probe")
            status = status_of(reconciler, "a")
            assert (status.ready, status.ready_since) == (False, None)
            assert status.message == "readiness probe failed: HTTP GET :8080/healthz: connection refused"

            fake.pass_probes("default_a")
            before = len(changes)
            await until(lambda: status_of(reconciler, "a").ready, "a ready once its probe passes", timeout=3)
            assert len(changes) > before  # a status frame is due at once
            assert status_of(reconciler, "a").message == ""
            assert all(name == "default_a" and h == READINESS.handler for name, h in fake.probes_run)

    asyncio.run(scenario())


def test_liveness_failure_restarts_in_place_after_readiness_went_off():
    seen_at_stop = []

    async def scenario():
        clock, fake, reconciler, _changes = make(before_stop=lambda: record_stop())

        async def record_stop():
            seen_at_stop.append((status_of(reconciler, "a"), fake.running()))

        replica = want("a", liveness_probe=LIVENESS, termination_grace_seconds=7)
        async with running(reconciler):
            reconciler.apply_desired(1, [replica])
            await until(lambda: status_of(reconciler, "a").ready, "a ready")
            first = status_of(reconciler, "a")

            fake.fail_probes("default_a", "exit code 1")
            await until(
                lambda: status_of(reconciler, "a").restart_count == 1, "a liveness restart", timeout=3
            )
            await until(lambda: status_of(reconciler, "a").phase == Phase.RUNNING, "a Running again")
            after = status_of(reconciler, "a")
            assert after.container_id == first.container_id  # in place
            assert after.started_at > first.started_at
            assert after.last_exit_code == 0
            assert fake.stops == [("default_a", 7)]

            # Readiness was off, and the container still ran, when the stop was about to be sent.
            (stop_status, engine_running), *_ = seen_at_stop
            assert not stop_status.ready and stop_status.phase == Phase.RUNNING
            assert "default_a" in engine_running
            assert (
                stop_status.message
                == "liveness probe failed 1 time: exec cat /tmp/alive: exit code 1; restarting"
            )

            # It fails again at once: the second restart waits for the back-off (10 s on this clock).
            await until(lambda: "restarting in" in status_of(reconciler, "a").message, "a back-off")
            assert status_of(reconciler, "a").message.endswith("; restarting in 10 s")
            clock.advance(10.1)
            reconciler.apply_desired(1, [replica])
            await until(
                lambda: status_of(reconciler, "a").restart_count == 2, "the second restart", timeout=3
            )

    asyncio.run(scenario())


def test_liveness_failure_under_never_stops_and_leaves_it_stopped():
    async def scenario():
        clock, fake, reconciler, _changes = make()
        replica = want("a", liveness_probe=LIVENESS, restart_policy=RestartPolicy.NEVER)
        fake.fail_probes("default_a", "exit code 1")
        async with running(reconciler):
            reconciler.apply_desired(1, [replica])
            await until(lambda: status_of(reconciler, "a").phase == Phase.FAILED, "a Failed", timeout=3)
            status = status_of(reconciler, "a")
            assert status.message == (
                "liveness probe failed 1 time: exec cat /tmp/alive: exit code 1; "
                "stopped (exited with code 0); restart policy never: not restarting"
            )
            clock.advance(1000)
            reconciler.apply_desired(1, [replica])
            await settle()
            assert fake.running() == set() and status_of(reconciler, "a").restart_count == 0

    asyncio.run(scenario())


def test_healthcheck_gates_readiness_and_unhealthy_restarts():
    async def scenario():
        _clock, fake, reconciler, _changes = make()
        async with running(reconciler):
            reconciler.apply_desired(1, [want("a")])
            await until(lambda: status_of(reconciler, "a").ready, "a ready")
            fake.set_health("default_a", Health.STARTING)
            await until(lambda: not status_of(reconciler, "a").ready, "not ready while starting")
            assert status_of(reconciler, "a").message == "health check: starting"
            fake.set_health("default_a", Health.HEALTHY)
            await until(lambda: status_of(reconciler, "a").ready, "ready once healthy")
            fake.set_health("default_a", Health.UNHEALTHY)
            await until(lambda: status_of(reconciler, "a").restart_count == 1, "restarted for unhealthy")
            assert fake.containers()[0].health == Health.STARTING  # a new run starts its checks over

    asyncio.run(scenario())


def test_removal_stops_with_the_replicas_grace_and_forgets_its_probes():
    async def scenario():
        _clock, fake, reconciler, _changes = make()
        async with running(reconciler):
            reconciler.apply_desired(
                1, [want("a", termination_grace_seconds=0, readiness_probe=READINESS), want("b")]
            )
            await until(lambda: status_of(reconciler, "a").ready, "a ready")
            assert reconciler._prober.views  # a is probed
            reconciler.apply_desired(2, [want("b")])
            await until(lambda: fake.running() == {"default_b"}, "a removed")
            assert fake.stops == [("default_a", 0)]
            await settle()
            assert not reconciler._prober.views and not reconciler._prober._tasks

    asyncio.run(scenario())


def test_a_replaced_container_is_probed_from_the_start():
    async def scenario():
        _clock, fake, reconciler, _changes = make()
        async with running(reconciler):
            reconciler.apply_desired(1, [want("a", readiness_probe=READINESS)])
            await until(lambda: status_of(reconciler, "a").ready, "a ready")
            old = status_of(reconciler, "a").container_id
            fake.fail_probes("default_a", "status 500")
            reconciler.apply_desired(2, [want("a", revision="r2", readiness_probe=READINESS)])
            await until(lambda: status_of(reconciler, "a").container_id not in (None, old), "a replaced")
            await until(lambda: status_of(reconciler, "a").phase == Phase.RUNNING, "the new a Running")
            assert not status_of(reconciler, "a").ready  # its own probe has not passed
            assert [c.state for c in fake.containers()] == [ContainerState.RUNNING]

    asyncio.run(scenario())


class SlowProbes(FakeRuntime):
    """A fake engine whose probes take a little while, like a real check does."""

    async def probe(self, container_id, handler, timeout):
        await asyncio.sleep(0.02)
        return await super().probe(container_id, handler, timeout)


def test_a_started_container_is_reported_with_its_first_readiness_verdict():
    """The frame saying a replica runs also says whether it is ready: no "running, not ready"
    frame followed by a "ready" one (a report and a controller pass each) a moment later."""

    async def scenario():
        reporter = StatusReporter(min_interval=0.05)
        fake = SlowProbes(NODE, images=[IMAGE], latency=0.04)  # create + start: past the debounce
        reconciler = Reconciler(fake, NODE, on_change=reporter.mark_dirty, before_stop=reporter.wait_sent)
        reporter.hold = reconciler.news_due  # as agent/daemon.py wires them
        frames: list[dict] = []

        async def send(text: str) -> None:
            frames.append(json.loads(text))

        def snapshot() -> dict:
            return {s.name: [s.phase, s.ready, s.message] for s in reconciler.statuses()}

        async with running(reconciler):
            sender = asyncio.create_task(reporter.run(send, snapshot, lambda: reconciler.ready))
            try:
                reconciler.apply_desired(1, [want("a", readiness_probe=READINESS)])
                await until(lambda: frames and frames[-1].get("a", [None, False])[1], "a frame with a ready")
                running_frames = [f["a"] for f in frames if f.get("a", [None])[0] == Phase.RUNNING]
                assert running_frames[0] == [Phase.RUNNING, True, ""], frames

                fake.fail_probes("default_b", "connection refused")
                reconciler.apply_desired(
                    2, [want("a", readiness_probe=READINESS), want("b", readiness_probe=READINESS)]
                )
                await until(lambda: frames[-1].get("b", [None])[0] == Phase.RUNNING, "b reported Running")
                await asyncio.sleep(0.1)
                running_frames = [f["b"] for f in frames if f.get("b", [None])[0] == Phase.RUNNING]
                # Its first (failed) verdict came with it: why it is not ready, from the first frame on.
                assert running_frames[0] == [
                    Phase.RUNNING,
                    False,
                    "readiness probe failed: HTTP GET :8080/healthz: connection refused",
                ], frames
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender

    asyncio.run(scenario())


async def _reported(latency: float, until_phase: str, window: float) -> tuple[list[dict], float]:
    """The status frames (per replica: phase, message) a reporter with a debounce `window`
    sends while two replicas start on an engine taking `latency` s per create and per
    start; and how long after the desired set the first frame naming them went."""
    reporter = StatusReporter(min_interval=window)
    fake = FakeRuntime(NODE, images=[IMAGE], latency=latency)
    reconciler = Reconciler(fake, NODE, on_change=reporter.mark_dirty, before_stop=reporter.wait_sent)
    reporter.hold = reconciler.news_due  # as agent/daemon.py wires them
    frames: list[dict] = []
    first_at: list[float] = []
    loop = asyncio.get_running_loop()

    async def send(text: str) -> None:
        frame = json.loads(text)
        if frame:
            first_at.append(loop.time())
            frames.append(frame)

    def snapshot() -> dict:
        return {s.name: [s.phase, s.message] for s in reconciler.statuses()}

    async with running(reconciler):
        sender = asyncio.create_task(reporter.run(send, snapshot, lambda: reconciler.ready))
        try:
            await until(lambda: reconciler.ready, "the engine listed")
            await asyncio.sleep(window * 2)  # past the debounce of the (empty) first frame
            started = loop.time()
            reconciler.apply_desired(1, [want("a"), want("b")])
            await until(
                lambda: frames and all(frames[-1].get(n, [None])[0] == until_phase for n in "ab"),
                f"both reported {until_phase}",
                timeout=5,
            )
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
    return frames, first_at[0] - started


def test_replicas_that_start_within_the_debounce_are_reported_running_in_one_frame():
    """No "creating container" frame followed by a "Running" one moments later: each is a
    report and a controller pass for the control plane."""
    frames, _ = asyncio.run(_reported(0, Phase.RUNNING, window=0.5))  # a window no load outlasts
    assert frames == [{"a": [Phase.RUNNING, ""], "b": [Phase.RUNNING, ""]}]


def test_a_slow_start_is_reported_while_under_way():
    """Waiting for news is bounded by the debounce window: an engine slower than that shows
    "creating container" first, at once."""
    frames, first_after = asyncio.run(_reported(1.0, Phase.STARTING, window=0.05))
    assert frames[0] == {
        "a": [Phase.STARTING, "creating container"],
        "b": [Phase.STARTING, "creating container"],
    }
    assert first_after < 0.6  # the window, not the engine's second


def test_only_creates_and_starts_hold_a_frame_not_pulls():
    _clock, _fake, reconciler, _changes = make()
    key = want("a").key
    reconciler._busy[key] = Activity("pulling image busybox:1")  # minutes, perhaps
    assert reconciler.news_due() is None
    reconciler._busy[key] = Activity("creating container", quick=True)
    assert reconciler.news_due() == START_NEWS_WAIT
