"""An in-memory container engine: the runtime of hollow nodes and of the agent's unit tests.

Containers are records in a dict. Creating, starting, stopping and removing them is
instant (or takes `latency` seconds), and emits the engine events the Docker runtime
would (create, start, die, destroy), so the reconciler sees the same sequence it sees on
a real server. No threads, no I/O: one process can hold thousands of these.

Tests drive it from outside: `crash()` makes a container exit as its process would,
`fail_next()` makes the next create/start/remove fail, `fail_probes()` makes a
container's probes fail (they succeed otherwise, without any network or process),
`set_health()` plays the image's HEALTHCHECK, `resync()` says the event stream was
interrupted, and `clock` (shared with the reconciler) decides every timestamp.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import replace

from agent.logbatch import LineHandoff
from agent.probes import Handler, ProbeResult
from agent.replicas import (
    DEFAULT_TERMINATION_GRACE,
    ContainerState,
    DesiredReplica,
    Health,
    ObservedContainer,
)
from agent.runtime import (
    MAX_IMAGES,
    RESYNC,
    ContainerEvent,
    EngineInfo,
    EngineUnavailable,
    ImageUnavailable,
    NameConflict,
    Runtime,
    RuntimeFailure,
)

ENGINE_VERSION = "hollow"
STOP_EXIT_CODE = 0  # the process honours SIGTERM, as a well-behaved service does
OPERATIONS = ("create", "start", "remove")


class FakeRuntime(Runtime):
    """One node's engine, in memory.

    `images` are on the node already; any other image is "pulled" on create (taking
    `latency` again) unless `pullable(image)` says no, which fails like a missing image.
    """

    def __init__(
        self,
        node: str,
        *,
        cpu_millis: int = 4000,
        memory_bytes: int = 8 << 30,
        images: Iterable[str] = (),
        latency: float = 0.0,
        pullable: Callable[[str], bool] = lambda image: True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.cpu_millis = cpu_millis
        self.memory_bytes = memory_bytes
        self.latency = latency
        self.clock = clock
        self._images = dict.fromkeys(images)  # ordered set: the order they arrived in
        self._pullable = pullable
        self._containers: dict[str, ObservedContainer] = {}
        self._by_name: dict[str, str] = {}
        self._created = 0
        self._subscribers: list[asyncio.Queue[ContainerEvent | None]] = []
        self._failures: dict[str, list[str]] = {}
        self._probe_failures: dict[str, tuple[type | None, str]] = {}
        self.probes_run: list[tuple[str, Handler]] = []  # (container name, handler), oldest first
        self.stops: list[tuple[str, int]] = []  # (container name, grace) of every stop, oldest first
        self._closed = False

    # -- what tests and the hollow runner look at and do -----------------------------------

    @property
    def images(self) -> tuple[str, ...]:
        return tuple(self._images)

    def containers(self) -> list[ObservedContainer]:
        """Every container on this engine, owned by the node or not, oldest first."""
        return list(self._containers.values())

    def running(self) -> set[str]:
        """The names of the running containers."""
        return {c.name for c in self._containers.values() if c.state == ContainerState.RUNNING}

    def add(self, container: ObservedContainer) -> None:
        """Put a container on the engine as if someone (a human, an earlier agent) made it."""
        self._store(container)
        self._emit(container.id, "create")

    def crash(self, name_or_id: str, exit_code: int = 1, *, oom: bool = False) -> ObservedContainer:
        """The container's process exits now with `exit_code` (the engine emits `die`)."""
        container = self._get(name_or_id)
        if container.state != ContainerState.RUNNING:
            raise RuntimeFailure(f"container {container.name} is not running")
        exited = replace(
            container,
            state=ContainerState.EXITED,
            exit_code=exit_code,
            oom_killed=oom,
            finished_at=self.clock(),
        )
        self._store(exited)
        if oom:
            self._emit(exited.id, "oom")
        self._emit(exited.id, "die")
        return exited

    def fail_next(self, operation: str, message: str) -> None:
        """Make the next `operation` ("create", "start" or "remove") fail with `message`."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}, not {operation!r}")
        self._failures.setdefault(operation, []).append(message)

    def fail_probes(self, name: str, message: str = "probe failed", *, handler: type | None = None) -> None:
        """Make the probes of container `name` fail (only those of `handler`'s type, if given)."""
        self._probe_failures[name] = (handler, message)

    def pass_probes(self, name: str) -> None:
        self._probe_failures.pop(name, None)

    def set_health(self, name_or_id: str, health: Health | None) -> None:
        """The image's HEALTHCHECK reports `health` (the engine emits `health_status: ...`)."""
        container = self._get(name_or_id)
        self._store(replace(container, health=health))
        self._emit(container.id, f"health_status: {health}")

    def resync(self) -> None:
        """Tell the watchers that events may have been lost (as a reconnected stream does)."""
        self._emit(None, RESYNC)

    # -- Runtime ---------------------------------------------------------------------------

    async def engine_info(self) -> EngineInfo:
        self._check_open()
        return EngineInfo(
            version=ENGINE_VERSION,
            cpu_millis=self.cpu_millis,
            memory_bytes=self.memory_bytes,
            images=tuple(self._images)[:MAX_IMAGES],
        )

    async def list_owned(self) -> list[ObservedContainer]:
        self._check_open()
        # What the Docker runtime's label filter selects; the reconciler checks ownership again.
        return [c for c in self._containers.values() if c.is_owned_by(self.node)]

    async def inspect(self, container_id: str) -> ObservedContainer | None:
        self._check_open()
        return self._containers.get(container_id)

    async def create(self, replica: DesiredReplica, *, on_pull: Callable[[], None] | None = None) -> str:
        await self._pause()
        self._maybe_fail("create")
        name = replica.container_name
        existing_id = self._by_name.get(name)
        if existing_id is not None:
            raise NameConflict(f"a container named {name} already exists", self._containers[existing_id])
        if replica.image not in self._images:
            if on_pull is not None:
                on_pull()
            await self._pause()
            if not self._pullable(replica.image):
                raise ImageUnavailable(
                    f"image not found: {replica.image} (pull failed: repository does not exist)"
                )
            self._images[replica.image] = None
        self._created += 1
        container_id = hashlib.sha256(f"{self.node}/{self._created}".encode()).hexdigest()
        self._store(
            ObservedContainer(
                id=container_id,
                name=name,
                state=ContainerState.CREATED,
                labels=replica.labels(self.node),
                image=replica.image,
            )
        )
        self._emit(container_id, "create")
        return container_id

    async def start(self, container_id: str) -> None:
        await self._pause()
        self._maybe_fail("start")
        container = self._containers.get(container_id)
        if container is None:
            raise RuntimeFailure(f"failed to start: No such container: {container_id}")
        if container.state == ContainerState.RUNNING:
            return
        self._store(
            replace(
                container,
                state=ContainerState.RUNNING,
                exit_code=None,
                error="",
                oom_killed=False,
                # Strictly later than the previous start even on a frozen test clock: a new run.
                started_at=max(self.clock(), (container.started_at or 0.0) + 1e-6),
                health=Health.STARTING if container.health is not None else None,
            )
        )
        self._emit(container_id, "start")

    async def stop(self, container_id: str, grace: int) -> None:
        await self._pause()
        container = self._containers.get(container_id)
        if container is not None:
            self._stop(container, grace)

    def _stop(self, container: ObservedContainer, grace: int) -> None:
        # The process honours the stop signal at once, so the grace is only recorded.
        self.stops.append((container.name, grace))
        if container.state == ContainerState.RUNNING:
            self._store(
                replace(
                    container,
                    state=ContainerState.EXITED,
                    exit_code=STOP_EXIT_CODE,
                    finished_at=self.clock(),
                )
            )
            self._emit(container.id, "die")

    async def remove(self, container_id: str, grace: int = DEFAULT_TERMINATION_GRACE) -> None:
        await self._pause()
        self._maybe_fail("remove")
        container = self._containers.get(container_id)
        if container is None:
            return
        self._stop(container, grace)
        del self._containers[container_id]
        self._by_name.pop(container.name, None)
        self._emit(container_id, "destroy")

    async def container_address(self, container_id: str) -> str | None:
        container = self._containers.get(container_id)
        if container is None or container.state != ContainerState.RUNNING:
            return None
        return "10.88.0.2"  # never connected to: `probe` below answers without the network

    async def exec_probe(self, container_id: str, command: tuple[str, ...], timeout: float) -> int:
        container = self._containers.get(container_id)
        if container is None or container.state != ContainerState.RUNNING:
            raise RuntimeFailure(f"container {container_id[:12]} is not running")
        return 0

    async def probe(self, container_id: str, handler: Handler, timeout: float) -> ProbeResult:
        container = self._containers.get(container_id)
        if container is None or container.state != ContainerState.RUNNING:
            return ProbeResult(False, f"{handler.describe()}: container is not running")
        self.probes_run.append((container.name, handler))
        failing = self._probe_failures.get(container.name)
        if failing is not None and (failing[0] is None or isinstance(handler, failing[0])):
            return ProbeResult(False, f"{handler.describe()}: {failing[1]}")
        return ProbeResult(True)

    async def events(self) -> AsyncIterator[ContainerEvent]:
        queue: asyncio.Queue[ContainerEvent | None] = asyncio.Queue()
        queue.put_nowait(ContainerEvent(None, RESYNC))  # subscribed: now list, nothing falls between
        self._subscribers.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._subscribers.remove(queue)

    async def open_logs(
        self, container_id: str, since: str | None, tail: int | None, follow: bool, handoff: LineHandoff
    ) -> Callable[[], None]:
        """A fake container writes no logs: the stream ends at once (or, followed, when stopped)."""
        self._get(container_id)
        if not follow:
            handoff.finish()
        return handoff.close

    async def close(self) -> None:
        self._closed = True
        for queue in self._subscribers:
            queue.put_nowait(None)

    # -- plumbing ---------------------------------------------------------------------------

    def _store(self, container: ObservedContainer) -> None:
        self._containers[container.id] = container
        self._by_name[container.name] = container.id

    def _get(self, name_or_id: str) -> ObservedContainer:
        container_id = self._by_name.get(name_or_id, name_or_id)
        try:
            return self._containers[container_id]
        except KeyError:
            raise RuntimeFailure(f"No such container: {name_or_id}") from None

    def _emit(self, container_id: str | None, action: str) -> None:
        event = ContainerEvent(container_id, action)
        for queue in self._subscribers:
            queue.put_nowait(event)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineUnavailable("the fake engine is closed")

    def _maybe_fail(self, operation: str) -> None:
        self._check_open()
        pending = self._failures.get(operation)
        if pending:
            raise RuntimeFailure(pending.pop(0))

    async def _pause(self) -> None:
        if self.latency > 0:
            await asyncio.sleep(self.latency)
