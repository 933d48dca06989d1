"""Runs the readiness and liveness probes of the running containers, and notes their Docker health.

Reads: the running containers of desired replicas, as the reconciler hands them over on
every plan (`sync`). Writes: one `ContainerProbes` per container run, which the planner
(liveness restarts) and the status builder (`ready`, messages) read. Each probe of each
container run is one asyncio task: wait `initial_delay_seconds`, then check every
`period_seconds` through the runtime (at most `max_concurrent` checks at once per node),
and fold each result into its pure `ProbeState`. A container that restarts (a new start
time) starts over with fresh states; one that stops or goes away has its tasks cancelled.
Whenever a result changes what the status shows, `on_change` is called, so the control
plane learns about readiness within one status frame.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from agent.probes import ContainerProbes, Probe, ProbeKind, ProbeResult, ProbeState
from agent.replicas import DesiredReplica, ObservedContainer
from agent.runtime import Runtime

log = logging.getLogger(__name__)

# A check that the runtime has not answered this long after its own timeout counts as failed.
CHECK_SLACK = 10.0
# How long the status reporter may hold a frame for a just-started container's first
# readiness verdict (agent/reporter.py): about what one check of a local container takes.
FIRST_VERDICT_WAIT = 0.05


class Prober:
    def __init__(
        self,
        runtime: Runtime,
        *,
        on_change: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.time,
        max_concurrent: int = 16,
    ) -> None:
        self._runtime = runtime
        self._on_change = on_change
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._views: dict[str, ContainerProbes] = {}
        self._specs: dict[str, tuple[Probe | None, Probe | None]] = {}
        self._tasks: dict[tuple[str, ProbeKind], asyncio.Task[None]] = {}
        # Containers whose first readiness verdict is awaited at once, until when (clock).
        self._first_verdicts: dict[str, float] = {}

    @property
    def views(self) -> Mapping[str, ContainerProbes]:
        """What is known about each probed container, by container id."""
        return self._views

    def sync(self, targets: Iterable[tuple[ObservedContainer, DesiredReplica]]) -> None:
        """Probe exactly these running containers with their replicas' probes; forget all others.

        Cheap when nothing changed, so the reconciler calls it before every plan.
        """
        seen = set()
        for container, replica in targets:
            probed = replica.readiness_probe is not None or replica.liveness_probe is not None
            if not probed and container.health is None:
                continue  # nothing to probe or to remember
            seen.add(container.id)
            self._track(container, replica)
        for container_id in [cid for cid in self._views if cid not in seen]:
            self._forget(container_id)

    def first_verdicts_due(self) -> float | None:
        """Seconds for which the soonest first readiness verdict is still awaited, or None.

        A container with a readiness probe and no initial delay is checked as soon as it is
        tracked; its verdict is "due" for FIRST_VERDICT_WAIT seconds after that, so that the
        status frame saying it runs can say whether it is ready too.
        """
        now = self._clock()
        for container_id in [c for c, until in self._first_verdicts.items() if until <= now]:
            del self._first_verdicts[container_id]
        return min(self._first_verdicts.values()) - now if self._first_verdicts else None

    def close(self) -> None:
        for container_id in list(self._views):
            self._forget(container_id)

    # -- plumbing ---------------------------------------------------------------------------

    def _track(self, container: ObservedContainer, replica: DesiredReplica) -> None:
        now = self._clock()
        spec = (replica.readiness_probe, replica.liveness_probe)
        view = self._views.get(container.id)
        if view is None or view.started_at != container.started_at or self._specs.get(container.id) != spec:
            self._forget(container.id)
            started = container.started_at if container.started_at is not None else now
            readiness, liveness = spec
            view = ContainerProbes(
                container_id=container.id,
                started_at=container.started_at,
                readiness=ProbeState.initial(ProbeKind.READINESS, readiness, started) if readiness else None,
                liveness=ProbeState.initial(ProbeKind.LIVENESS, liveness, started) if liveness else None,
                health=container.health,
                health_since=now,
            )
            self._views[container.id] = view
            self._specs[container.id] = spec
            if readiness is not None and readiness.initial_delay_seconds == 0:
                self._first_verdicts[container.id] = now + FIRST_VERDICT_WAIT
            for kind, probe in ((ProbeKind.READINESS, readiness), (ProbeKind.LIVENESS, liveness)):
                if probe is not None:
                    self._tasks[(container.id, kind)] = asyncio.get_running_loop().create_task(
                        self._run(container.id, kind), name=f"berth-probe-{kind}-{container.id[:12]}"
                    )
        elif view.health != container.health:
            self._views[container.id] = replace(view, health=container.health, health_since=now)

    def _forget(self, container_id: str) -> None:
        self._first_verdicts.pop(container_id, None)
        self._views.pop(container_id, None)
        self._specs.pop(container_id, None)
        for kind in ProbeKind:
            task = self._tasks.pop((container_id, kind), None)
            if task is not None:
                task.cancel()

    def _state(self, container_id: str, kind: ProbeKind) -> ProbeState | None:
        view = self._views.get(container_id)
        if view is None:
            return None
        return view.readiness if kind == ProbeKind.READINESS else view.liveness

    async def _run(self, container_id: str, kind: ProbeKind) -> None:
        state = self._state(container_id, kind)
        while state is not None:
            await asyncio.sleep(state.delay(self._clock()))
            async with self._slots:
                result = await self._check(container_id, state.probe)
            current = self._state(container_id, kind)
            if current is not state:
                return  # the container restarted or went away meanwhile: a new task took over
            state = state.after_result(result.ok, self._clock(), result.detail)
            view = self._views[container_id]
            if kind == ProbeKind.READINESS:
                self._views[container_id] = replace(view, readiness=state)
                self._first_verdicts.pop(container_id, None)
            else:
                self._views[container_id] = replace(view, liveness=state)
            if _shown(state) != _shown(current):
                if not result.ok:
                    log.info("container %s: %s", container_id[:12], state.failure_message())
                self._on_change()
            if kind == ProbeKind.LIVENESS and state.failed:
                return  # the planner restarts it; its next run is probed from the start

    async def _check(self, container_id: str, probe: Probe) -> ProbeResult:
        try:
            return await asyncio.wait_for(
                self._runtime.probe(container_id, probe.handler, float(probe.timeout_seconds)),
                probe.timeout_seconds + CHECK_SLACK,
            )
        except TimeoutError:
            return ProbeResult(False, f"{probe.handler.describe()}: no answer from the container engine")
        except Exception as exc:
            log.exception("probe of container %s failed", container_id[:12])
            return ProbeResult(False, f"{probe.handler.describe()}: agent error: {exc}")


def _shown(state: ProbeState) -> tuple[object, ...]:
    """What of a probe's state the status frame shows: a change of it warrants a new frame."""
    return (state.passing, state.failed, "" if state.passing else state.detail)
