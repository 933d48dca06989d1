"""Applies convergence plans to the engine and keeps the observed state current.

Reads: the last accepted desired set (from the session), the engine's events and full
container lists (from the runtime). Writes: containers, through the runtime. After every
change it plans again over the whole state (converge.plan), so a missed, late or repeated
trigger is harmless: the next plan sees the same state and decides the same. A replica
with an action in flight is skipped until that action ends, so it is never acted on twice
at once, and nothing is planned before the first full list of the engine: that list is how
containers are adopted after an agent restart, without duplicates.

It owns the prober (agent/prober.py): before every plan it hands over the running
containers of desired replicas, whose probe verdicts the plan (liveness restarts) and the
status (`ready`) then read. Before it stops a running container it takes readiness off and
waits (briefly) until a status frame saying so has gone out (`before_stop`): the control
plane stops sending traffic before the process gets its SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from typing import Any

from agent.converge import (
    STOPPING_ACTIONS,
    Action,
    Create,
    Plan,
    Remove,
    Replace,
    Restart,
    RestartUnhealthy,
    Start,
    Stop,
    canonical_container,
    owned_by_replica,
    plan,
)
from agent.prober import Prober
from agent.replicas import ContainerState, DesiredReplica, ObservedContainer, ReplicaKey
from agent.restarts import RestartRecord
from agent.runtime import RESYNC, NameConflict, Runtime, RuntimeFailure
from agent.status import Activity, Memo, ReplicaStatus, describe, exit_summary

log = logging.getLogger(__name__)

_NO_HISTORY = RestartRecord()
WAKE_MARGIN = 0.05  # plan a little after a back-off expires, never just before
# How long a status frame may wait for a create or start under way (news_due); the
# reporter bounds every wait by its debounce window anyway.
START_NEWS_WAIT = 0.05


class _Refresh:
    """One inspect loop per container: a change seen during an inspect triggers one more."""

    __slots__ = ("dirty", "done")

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.dirty = False
        self.done = done


class Reconciler:
    """Converges one node's containers to the desired set it is given."""

    def __init__(
        self,
        runtime: Runtime,
        node: str,
        *,
        on_change: Callable[[], None] = lambda: None,
        before_stop: Callable[[], Awaitable[None]] | None = None,
        max_starts: int = 8,
        max_stops: int = 32,
        max_probes: int = 16,
        relist_interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.generation = 0  # the last desired generation accepted and acted on
        self._runtime = runtime
        self._on_change = on_change
        self._before_stop = before_stop
        self._relist_interval = relist_interval
        self._clock = clock
        # Stopping waits up to the termination grace: separate slots, so that removals can
        # never hold up creating and starting containers (the latency users wait on).
        # Creating and starting load the engine, so few at once; a stop mostly waits for the
        # process to exit, so many more can wait side by side.
        self._start_slots = asyncio.Semaphore(max_starts)
        self._stop_slots = asyncio.Semaphore(max_stops)
        self._desired: dict[ReplicaKey, DesiredReplica] | None = None  # None: no frame yet
        self._observed: dict[str, ObservedContainer] = {}
        # Sequence number of the last cache write per container id, kept for a while after
        # removal, so a full list that started earlier cannot resurrect or overwrite it.
        self._written: dict[str, int] = {}
        self._seq = 0
        self._refreshes: dict[str, _Refresh] = {}
        self._busy: dict[ReplicaKey, Activity] = {}
        self._restarts: dict[ReplicaKey, RestartRecord] = {}
        self._status_memo: Memo = {}  # statuses() describes only replicas that changed
        self._ready = False
        self._reconcile_scheduled = False
        self._wake: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._prober = Prober(runtime, on_change=self._probes_changed, clock=clock, max_concurrent=max_probes)

    # -- inputs ---------------------------------------------------------------------------

    def apply_desired(self, generation: int, replicas: Sequence[DesiredReplica]) -> bool:
        """Accept a full desired set; False (and ignored) if its generation is older than ours."""
        if generation < self.generation:
            return False
        previous = self._desired or {}
        desired = {replica.key: replica for replica in replicas}
        for key in list(self._restarts):
            old, new = previous.get(key), desired.get(key)
            if new is None or (old is not None and old.revision != new.revision):
                del self._restarts[key]  # a new revision starts with a clean history
        self._desired = desired
        self.generation = generation
        self._kick()
        self._changed()
        return True

    def desired_replica(self, key: ReplicaKey) -> DesiredReplica | None:
        """The entry of a replica in the set applied last (a partial frame refers to it)."""
        return (self._desired or {}).get(key)

    def news_due(self) -> float | None:
        """Seconds for which a status frame may wait for news on its way, or None (the
        status reporter holds a frame that long, within its debounce window): a
        container being created or started, whose outcome a local engine gives within
        moments (not one whose image is being pulled), or a just-started container's
        first readiness verdict. A frame saying
        "creating container" and another, moments later, saying "Running" then go as one:
        one report, and one controller pass, fewer for the control plane per start."""
        verdicts = self._prober.first_verdicts_due()
        if any(activity.quick for activity in self._busy.values()):
            return max(verdicts or 0.0, START_NEWS_WAIT)
        return verdicts

    @property
    def ready(self) -> bool:
        """True once the engine has been listed: before that, nothing is known about containers."""
        return self._ready

    def statuses(self) -> list[ReplicaStatus]:
        """The status of every replica this node knows about, for a full status frame."""
        return describe(
            self._desired.values() if self._desired is not None else None,
            self._observed.values(),
            self._busy,
            self._restarts,
            self._clock(),
            node=self.node,
            probes=self._prober.views,
            memo=self._status_memo,
        )

    async def run(self) -> None:
        """Watch the engine and converge, until cancelled.

        The first RESYNC from the event stream triggers the first full list (events are
        subscribed before listing, so nothing falls between); a list every
        `relist_interval` seconds is the safety net for anything the stream missed.
        """
        relist = asyncio.create_task(self._relist_periodically(), name="berth-relist")
        try:
            async with contextlib.aclosing(self._runtime.events()) as events:
                async for event in events:
                    if event.action == RESYNC:
                        self._spawn(self._relist())
                    elif event.container_id:
                        self._request_refresh(event.container_id)
        finally:
            relist.cancel()
            self._prober.close()
            if self._wake is not None:
                self._wake.cancel()
            for task in list(self._tasks):
                task.cancel()

    # -- observed cache -------------------------------------------------------------------

    def _write(self, container_id: str, container: ObservedContainer | None) -> bool:
        """Record what the engine said about a container; True if that changed anything."""
        self._seq += 1
        self._written[container_id] = self._seq
        before = self._observed.get(container_id)
        if container is None:
            self._observed.pop(container_id, None)
        else:
            self._observed[container_id] = container
        return before != container

    async def _relist_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._relist_interval)
            await self._relist()

    async def _relist(self) -> None:
        started = self._seq
        try:
            containers = await self._runtime.list_owned()
        except RuntimeFailure as exc:
            log.warning("cannot list containers: %s", exc)
            return
        listed = {c.id: c for c in containers if c.is_owned_by(self.node)}
        changed = False
        for container_id in list(self._observed):
            if container_id not in listed and self._written.get(container_id, 0) <= started:
                changed |= self._write(container_id, None)
        for container_id, container in listed.items():
            if self._written.get(container_id, 0) <= started:
                changed |= self._write(container_id, container)
        for container_id, seq in list(self._written.items()):
            if container_id not in self._observed and seq <= started:
                del self._written[container_id]  # a tombstone the list confirmed
        if not self._ready:
            self._ready = True
            log.info("found %d container(s) of node %s on the engine; adopting them", len(listed), self.node)
            changed = True
        if changed:
            self._kick()
            self._changed()

    def _request_refresh(self, container_id: str) -> asyncio.Future[None]:
        """Inspect a container again soon; the future resolves once the cache reflects it."""
        pending = self._refreshes.get(container_id)
        if pending is not None:
            pending.dirty = True
            return pending.done
        pending = _Refresh(asyncio.get_running_loop().create_future())
        self._refreshes[container_id] = pending
        self._spawn(self._refresh(container_id, pending))
        return pending.done

    async def _refresh(self, container_id: str, pending: _Refresh) -> None:
        changed = False
        try:
            while True:
                pending.dirty = False
                try:
                    container = await self._runtime.inspect(container_id)
                except RuntimeFailure as exc:
                    log.warning("cannot inspect container %s: %s", container_id[:12], exc)
                    break
                if container is not None and not container.is_owned_by(self.node):
                    container = None  # never cache what is not ours
                changed |= self._write(container_id, container)
                if not pending.dirty:
                    break
        finally:
            del self._refreshes[container_id]
            if not pending.done.done():
                pending.done.set_result(None)
            if changed:
                self._kick()
                self._changed()

    # -- planning and actions -------------------------------------------------------------

    def _changed(self) -> None:
        self._on_change()

    def _probes_changed(self) -> None:
        # A readiness flip is news for the control plane; a liveness failure is work to plan.
        self._kick()
        self._changed()

    def _probe_targets(self) -> Iterator[tuple[ObservedContainer, DesiredReplica]]:
        """The running container of each desired replica, in the replica's revision."""
        desired = self._desired or {}
        groups, _ = owned_by_replica(self._observed.values(), self.node)
        for key, containers in groups.items():
            replica = desired.get(key)
            if replica is None:
                continue
            container = canonical_container(key, containers)
            if container.state == ContainerState.RUNNING and container.revision == replica.revision:
                yield container, replica

    def _plan(self) -> Plan:
        """A plan over everything known now (only called once a desired set arrived)."""
        return plan(
            (self._desired or {}).values(),
            self._observed.values(),
            self._clock(),
            self._restarts,
            node=self.node,
            probes=self._prober.views,
        )

    def _kick(self) -> None:
        """Plan again soon; many kicks in one loop iteration give one plan."""
        if not self._reconcile_scheduled:
            self._reconcile_scheduled = True
            asyncio.get_running_loop().call_soon(self._reconcile)

    def _reconcile(self) -> None:
        self._reconcile_scheduled = False
        if not self._ready or self._desired is None:
            return
        self._prober.sync(self._probe_targets())
        now = self._clock()
        result = self._plan()
        dispatched = False
        for action in result.actions:
            if action.key in self._busy:
                continue
            self._busy[action.key] = _activity(action)
            self._spawn(self._execute(action))
            dispatched = True
        if dispatched:
            self._changed()
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        if result.wake_at is not None:
            delay = max(0.0, result.wake_at - now) + WAKE_MARGIN
            self._wake = asyncio.get_running_loop().call_later(delay, self._kick)

    async def _execute(self, action: Action) -> None:
        key = action.key
        slots = self._stop_slots if isinstance(action, STOPPING_ACTIONS) else self._start_slots
        try:
            waited = slots.locked()
            async with slots:
                if waited and not self._still_wanted(action):
                    log.debug("dropping %s: overtaken while it waited", _describe_action(action))
                    return
                await self._perform(action)
        except RuntimeFailure as exc:
            self._failed(action, str(exc))
        except Exception as exc:
            log.exception("unexpected error in %s", _describe_action(action))
            self._failed(action, f"agent error: {exc}")
        finally:
            self._busy.pop(key, None)
            self._kick()
            self._changed()

    def _still_wanted(self, action: Action) -> bool:
        """Whether a fresh plan would still take this action (it may have waited a while)."""
        if self._desired is None:
            return False
        fresh = self._plan()
        return _identity(action) in {_identity(other) for other in fresh.actions}

    def _failed(self, action: Action, message: str) -> None:
        log.warning("%s failed: %s", _describe_action(action), message)
        record = self._restarts.get(action.key, _NO_HISTORY)
        self._restarts[action.key] = record.after_failure(message, self._clock())

    async def _perform(self, action: Action) -> None:
        if isinstance(action, Create):
            await self._create(action.replica)
        elif isinstance(action, Start):
            log.info("starting %s (created, never started)", action.container.name)
            try:
                await self._runtime.start(action.container.id)
            finally:
                await self._request_refresh(action.container.id)
            self._succeeded(action.key)
        elif isinstance(action, Restart):
            container = action.container
            record = self._restarts.get(action.key, _NO_HISTORY)
            log.info(
                "restarting %s (%s; restart %d)",
                container.name,
                exit_summary(container, action.replica),
                record.restart_count + 1,
            )
            try:
                await self._runtime.start(container.id)
                self._restarts[action.key] = record.after_restart(container, self._clock())
            finally:
                await self._request_refresh(container.id)
        elif isinstance(action, RestartUnhealthy):
            await self._restart_unhealthy(action)
        elif isinstance(action, Stop):
            container = action.container
            log.info("stopping %s (%s); restart policy never: left stopped", container.name, action.reason)
            await self._announce_stop()
            try:
                await self._runtime.stop(container.id, action.grace)
            finally:
                await self._request_refresh(container.id)
            stopped = self._observed.get(container.id)
            record = self._restarts.get(action.key, _NO_HISTORY)
            self._restarts[action.key] = record.after_stop(stopped, action.reason)
        elif isinstance(action, Remove):
            await self._remove(action.container, action.reason, action.grace)
            if self._desired is None or action.key not in self._desired:
                self._restarts.pop(action.key, None)
        elif isinstance(action, Replace):
            await self._remove(action.container, action.reason, action.grace)
            self._restarts.pop(action.key, None)
            self._busy[action.key] = Activity("creating container", quick=True)
            self._changed()
            await self._create(action.replica)

    async def _create(self, replica: DesiredReplica) -> None:
        key = replica.key
        started = time.monotonic()

        def pulling() -> None:
            if key in self._busy:
                self._busy[key] = Activity(f"pulling image {replica.image}")
                self._changed()

        log.info("creating %s (image %s)", replica.container_name, replica.image)
        try:
            container_id = await self._runtime.create(replica, on_pull=pulling)
        except NameConflict as exc:
            existing = exc.existing
            if existing is None or not existing.is_owned_by(self.node):
                raise
            # Ours, but the cache missed it (e.g. an event lost): adopt it; the next plan decides.
            log.info("adopting existing container %s (%s)", existing.name, existing.id[:12])
            self._write(existing.id, existing)
            return
        self._busy[key] = Activity("starting", quick=True)
        try:
            await self._runtime.start(container_id)
        finally:
            await self._request_refresh(container_id)
        self._succeeded(key)
        log.info(
            "started %s (%s) in %.0f ms",
            replica.container_name,
            container_id[:12],
            (time.monotonic() - started) * 1000,
        )

    async def _restart_unhealthy(self, action: RestartUnhealthy) -> None:
        """Stop (with the replica's grace) and start again a container that runs but is not alive."""
        container = action.container
        record = self._restarts.get(action.key, _NO_HISTORY)
        count = record.restart_count + 1
        log.info("restarting %s in place (%s; restart %d)", container.name, action.reason, count)
        await self._announce_stop()
        try:
            await self._runtime.stop(container.id, action.grace)
        finally:
            await self._request_refresh(container.id)
        stopped = self._observed.get(container.id, container)
        # Should the start fail, the planner knows it was stopped for failing (policy on-failure).
        record = record.after_stop(stopped, action.reason)
        self._restarts[action.key] = record
        try:
            await self._runtime.start(container.id)
            self._restarts[action.key] = record.after_restart(stopped, self._clock())
        finally:
            await self._request_refresh(container.id)

    async def _announce_stop(self) -> None:
        """Let the control plane see `ready: false` before the process is told to stop."""
        self._changed()
        if self._before_stop is not None:
            await self._before_stop()

    async def _remove(self, container: ObservedContainer, reason: str, grace: int) -> None:
        log.info("removing %s (%s, grace %d s): %s", container.name, container.id[:12], grace, reason)
        if container.state == ContainerState.RUNNING:
            await self._announce_stop()
        await self._runtime.remove(container.id, grace)
        self._write(container.id, None)

    def _succeeded(self, key: ReplicaKey) -> None:
        self._restarts[key] = self._restarts.get(key, _NO_HISTORY).after_success()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reconciler task failed", exc_info=task.exception())


def _activity(action: Action) -> Activity:
    if isinstance(action, Create):
        return Activity("creating container", quick=True)
    if isinstance(action, Start):
        return Activity("starting", quick=True)
    if isinstance(action, Restart):
        return Activity("restarting", quick=True)
    if isinstance(action, RestartUnhealthy):
        return Activity(f"{action.reason}; restarting", stopping=True)
    if isinstance(action, Stop):
        return Activity(f"{action.reason}; stopping (restart policy never)", stopping=True)
    if isinstance(action, Replace):
        # The old container keeps its phase while it stops; creating the new one is "Starting".
        return Activity(f"replacing: {action.reason}", stopping=True)
    return Activity(f"stopping: {action.reason}", stopping=True)


def _describe_action(action: Action) -> str:
    if isinstance(action, Create):
        return f"creating {action.replica.container_name}"
    verb = type(action).__name__.lower()
    return f"{verb} {action.container.name}"


def _identity(action: Action) -> tuple[object, ...]:
    """What makes two planned actions the same decision (a container's details may have moved)."""
    container = getattr(action, "container", None)
    return (type(action), action.key, container.id if container else None, getattr(action, "replica", None))
