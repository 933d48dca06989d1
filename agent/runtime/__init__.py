"""The seam between the agent and a container engine.

The reconciler only talks to a `Runtime`: the Docker engine runtime (runtime/docker.py)
on real servers, and an in-memory fake (runtime/fake.py) that lets one process simulate
thousands of hollow nodes for scale tests. All methods are coroutines so a fake needs no threads; a
runtime whose client blocks (Docker's) runs its calls in worker threads itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from agent.logbatch import LineHandoff
from agent.probes import Exec, Handler, HttpGet, ProbeResult
from agent.replicas import DEFAULT_TERMINATION_GRACE, DesiredReplica, ObservedContainer
from agent.runtime import checks
from agent.samples import ContainerSample, ExecHandle, NodeSample

# The event action a runtime emits when its event stream (re)connected: events may have
# been missed, so the caller must list the containers again.
RESYNC = "resync"


# At most this many image references go into `hello` (a build host can hold thousands).
MAX_IMAGES = 500


@dataclass(frozen=True)
class EngineInfo:
    version: str
    cpu_millis: int
    memory_bytes: int
    # Image references (repo:tag) the engine holds, for the scheduler's image locality score.
    images: tuple[str, ...] = ()


@dataclass(frozen=True)
class ContainerEvent:
    """Something happened to a container (`action` is the engine's word, e.g. "start", "die")."""

    container_id: str | None
    action: str


class RuntimeFailure(Exception):
    """An action failed; str(exc) is a message for the replica's status, meant for humans."""


class ImageUnavailable(RuntimeFailure):
    """The image is not on the node and could not be pulled."""


class NameConflict(RuntimeFailure):
    """A container with the replica's name exists already."""

    def __init__(self, message: str, existing: ObservedContainer | None) -> None:
        super().__init__(message)
        self.existing = existing  # None when it vanished or is not visible


class EngineUnavailable(RuntimeFailure):
    """The engine could not be reached at all."""


class ProbeTimeout(RuntimeFailure):
    """A probe's command did not finish within its timeout."""


class Runtime(ABC):
    """A container engine seen through the containers one node owns."""

    @abstractmethod
    async def engine_info(self) -> EngineInfo:
        """Version, capacity and the images on hand (at most MAX_IMAGES), for the `hello` frame."""

    @abstractmethod
    async def list_owned(self) -> list[ObservedContainer]:
        """Every container labelled as managed by Berth for this node, running or not."""

    @abstractmethod
    async def inspect(self, container_id: str) -> ObservedContainer | None:
        """The container's current state, or None if it no longer exists."""

    @abstractmethod
    async def create(self, replica: DesiredReplica, *, on_pull: Callable[[], None] | None = None) -> str:
        """Create (not start) the replica's container, pulling its image if missing; return its id.

        Calls `on_pull` before pulling so the caller can report it. Raises ImageUnavailable,
        NameConflict or RuntimeFailure.
        """

    @abstractmethod
    async def start(self, container_id: str) -> None:
        """Start a created or exited container. Raises RuntimeFailure."""

    @abstractmethod
    async def stop(self, container_id: str, grace: int) -> None:
        """Stop: the stop signal, `grace` seconds, then SIGKILL. Already stopped or gone is no error."""

    @abstractmethod
    async def remove(self, container_id: str, grace: int = DEFAULT_TERMINATION_GRACE) -> None:
        """Stop with `grace` seconds to exit, then remove; a container already gone is not an error."""

    @abstractmethod
    async def container_address(self, container_id: str) -> str | None:
        """The container's own IP address on its engine network (for HTTP and TCP probes), if any."""

    @abstractmethod
    async def exec_probe(self, container_id: str, command: tuple[str, ...], timeout: float) -> int:
        """Run `command` in the running container; its exit code. Raises ProbeTimeout, RuntimeFailure."""

    async def probe(self, container_id: str, handler: Handler, timeout: float) -> ProbeResult:
        """Run one probe check against the container (HTTP and TCP to its address, exec inside it)."""
        where = handler.describe()
        if isinstance(handler, Exec):
            try:
                code = await self.exec_probe(container_id, handler.command, timeout)
            except ProbeTimeout:
                return ProbeResult(False, f"{where}: timed out after {timeout:g} s")
            except RuntimeFailure as exc:
                return ProbeResult(False, f"{where}: {exc}")
            return ProbeResult(True) if code == 0 else ProbeResult(False, f"{where}: exit code {code}")
        try:
            address = await self.container_address(container_id)
        except RuntimeFailure as exc:
            return ProbeResult(False, f"{where}: {exc}")
        if not address:
            return ProbeResult(False, f"{where}: the container has no IP address")
        if isinstance(handler, HttpGet):
            return await checks.http_get(address, handler, timeout)
        return await checks.tcp_connect(address, handler, timeout)

    @abstractmethod
    def events(self) -> AsyncIterator[ContainerEvent]:
        """Changes to this node's containers, forever; a RESYNC event whenever some may be lost."""

    @abstractmethod
    async def close(self) -> None:
        """Release threads and connections."""

    # -- streams (agent/streams.py, agent/metrics.py); a runtime without them says so ------

    async def open_logs(
        self, container_id: str, since: str | None, tail: int | None, follow: bool, handoff: LineHandoff
    ) -> Callable[[], None]:
        """Start putting the container's log lines into `handoff` (finish() at the end); return
        a function that stops the stream. `since`: RFC 3339 UTC, lines at that instant included."""
        raise RuntimeFailure("this engine cannot stream logs")

    async def open_exec(
        self,
        container_id: str,
        command: tuple[str, ...],
        cols: int,
        rows: int,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int | None], None],
    ) -> ExecHandle:
        """Run `command` in the container with a TTY; output and exit reach the callbacks on the loop."""
        raise RuntimeFailure("this engine cannot run commands in containers")

    async def container_samples(self, container_ids: list[str]) -> dict[str, ContainerSample]:
        """Counters of each running container (those that vanished are left out)."""
        return {}

    async def node_sample(self) -> NodeSample | None:
        """Counters of the whole server, or None when there is no real server (hollow nodes)."""
        return None
