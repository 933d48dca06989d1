"""The Docker engine runtime: the node's containers through the Docker SDK.

The SDK blocks, so every call runs in this runtime's own bounded thread pool, and the
event stream is read by a dedicated thread that hands events to the asyncio loop with
`call_soon_threadsafe`. Only containers labelled `berth.managed=true` and
`berth.node=<node>` are ever listed, watched or changed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import docker
import docker.errors
import requests
from docker.utils import parse_repository_tag

from agent.reconnect import ReconnectDelay
from agent.replicas import (
    DEFAULT_TERMINATION_GRACE,
    MANAGED_LABEL,
    NODE_LABEL,
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
    ProbeTimeout,
    Runtime,
    RuntimeFailure,
)
from agent.runtime.docker_streams import DockerStreamsMixin

log = logging.getLogger(__name__)

# Engine event actions that can change what `inspect` says about a container.
_WATCHED_ACTIONS = frozenset(
    {"create", "start", "restart", "die", "destroy", "pause", "unpause", "oom", "rename", "update"}
)
# The HEALTHCHECK's verdict changed; the action carries it: "health_status: healthy".
_HEALTH_ACTION = "health_status"
# Actions after which a container's address may differ (it is cached between probes).
_ADDRESS_ACTIONS = frozenset({"start", "restart", "die", "destroy"})
EXEC_POLL_INTERVAL = (0.02, 0.25)  # first and longest wait between polls of a probe's exec


def watched(action: str) -> bool:
    """Whether an engine event action can change what `inspect` says (pure; tested)."""
    return action in _WATCHED_ACTIONS or action.split(":", 1)[0] == _HEALTH_ACTION


class DockerRuntime(DockerStreamsMixin, Runtime):
    """Runtime backed by a Docker engine at `base_url` (e.g. unix:///var/run/docker.sock)."""

    def __init__(self, base_url: str, node: str, *, workers: int = 48, timeout: float = 60.0) -> None:
        self._base_url = base_url
        self._node = node
        self._workers = workers
        self._timeout = timeout
        self._owner_filter = [f"{MANAGED_LABEL}=true", f"{NODE_LABEL}={node}"]
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="berth-docker")
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._closed = threading.Event()
        self._streams: set[Any] = set()
        self._streams_lock = threading.Lock()
        self._addresses: dict[str, str | None] = {}
        self._addresses_lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------

    def _new_client(self, **extra: Any) -> docker.DockerClient:
        return docker.DockerClient(base_url=self._base_url, version="auto", timeout=self._timeout, **extra)

    def _api(self) -> docker.APIClient:
        # Created lazily, in a worker thread: `version="auto"` asks the engine, which may be down.
        with self._client_lock:
            if self._client is None:
                self._client = self._new_client(max_pool_size=self._workers)
            return self._client.api

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except RuntimeFailure:
            raise
        except docker.errors.APIError as exc:
            raise RuntimeFailure(_explain(exc)) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise EngineUnavailable(f"container engine unreachable at {self._base_url}: {exc}") from exc

    # -- Runtime --------------------------------------------------------------------------

    async def engine_info(self) -> EngineInfo:
        info, images = await self._run(lambda: (self._api().info(), self._api().images()))
        return EngineInfo(
            version=str(info.get("ServerVersion", "")),
            cpu_millis=int(info.get("NCPU", 0)) * 1000,
            memory_bytes=int(info.get("MemTotal", 0)),
            images=image_references(images),
        )

    async def list_owned(self) -> list[ObservedContainer]:
        return await self._run(self._list_owned)

    def _list_owned(self) -> list[ObservedContainer]:
        api = self._api()
        observed = []
        for summary in api.containers(all=True, filters={"label": self._owner_filter}):
            try:
                observed.append(observed_from_inspect(api.inspect_container(summary["Id"])))
            except docker.errors.NotFound:
                continue  # removed between the list and the inspect
        return observed

    async def inspect(self, container_id: str) -> ObservedContainer | None:
        return await self._run(self._inspect, container_id)

    def _inspect(self, container_id: str) -> ObservedContainer | None:
        try:
            return observed_from_inspect(self._api().inspect_container(container_id))
        except docker.errors.NotFound:
            return None

    async def create(self, replica: DesiredReplica, *, on_pull: Callable[[], None] | None = None) -> str:
        loop = asyncio.get_running_loop()

        def notify_pull() -> None:
            if on_pull is not None:
                loop.call_soon_threadsafe(on_pull)

        return await self._run(self._create, replica, notify_pull)

    def _create(self, replica: DesiredReplica, notify_pull: Callable[[], None]) -> str:
        api = self._api()
        args = self._create_args(api, replica)
        # Create first and pull only on "no such image": the common case costs one round trip.
        try:
            return api.create_container(**args)["Id"]
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.APIError as exc:
            raise self._create_failure(api, replica, exc) from exc
        notify_pull()
        self._pull(api, replica.image)
        try:
            return api.create_container(**args)["Id"]
        except docker.errors.APIError as exc:
            raise self._create_failure(api, replica, exc) from exc

    def _create_args(self, api: docker.APIClient, replica: DesiredReplica) -> dict[str, Any]:
        bindings: dict[str, list[int | None]] = {}
        for port in replica.ports:
            bindings.setdefault(f"{port.container}/{port.protocol}", []).append(port.host)
        cpu, memory = replica.resources.cpu_millis, replica.resources.memory_bytes
        host_config = api.create_host_config(
            port_bindings={k: v[0] if len(v) == 1 else v for k, v in bindings.items()} or None,
            nano_cpus=cpu * 1_000_000 if cpu else None,
            mem_limit=memory if memory else None,
        )
        return {
            "image": replica.image,
            "command": list(replica.command) if replica.command else None,
            "name": replica.container_name,
            "labels": replica.labels(self._node),
            "environment": [f"{k}={v}" for k, v in replica.env],
            "ports": [(p.container, p.protocol) for p in replica.ports] or None,
            "host_config": host_config,
            # `docker stop` by hand honours the replica's grace too.
            "stop_timeout": replica.termination_grace_seconds,
            "detach": True,
        }

    def _create_failure(
        self, api: docker.APIClient, replica: DesiredReplica, exc: docker.errors.APIError
    ) -> RuntimeFailure:
        if exc.status_code != 409:
            return RuntimeFailure(f"cannot create container: {_explain(exc)}")
        name = replica.container_name
        try:
            existing = observed_from_inspect(api.inspect_container(name))
        except docker.errors.NotFound:
            existing = None
        if existing is not None and existing.is_owned_by(self._node):
            return NameConflict(f"a container named {name} already exists", existing)
        return NameConflict(
            f"a container named {name} already exists and is not managed by Berth on this node; "
            "remove or rename it",
            existing,
        )

    def _pull(self, api: docker.APIClient, image: str) -> None:
        repository, tag = parse_repository_tag(image)
        log.info("pulling image %s", image)
        try:
            # Without a tag the SDK would pull every tag of the repository.
            for line in api.pull(repository, tag=tag or "latest", stream=True, decode=True):
                if isinstance(line, dict) and line.get("error"):
                    raise ImageUnavailable(f"image not found: {image} (pull failed: {line['error']})")
        except docker.errors.APIError as exc:
            raise ImageUnavailable(f"image not found: {image} (pull failed: {_explain(exc)})") from exc

    async def start(self, container_id: str) -> None:
        await self._run(self._start, container_id)

    def _start(self, container_id: str) -> None:
        try:
            self._api().start(container_id)
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"failed to start: {_explain(exc)}") from exc

    async def stop(self, container_id: str, grace: int) -> None:
        await self._run(self._stop, container_id, grace)

    def _stop(self, container_id: str, grace: int) -> None:
        try:
            self._api().stop(container_id, timeout=grace)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            raise RuntimeFailure(f"cannot stop container: {_explain(exc)}") from exc

    async def remove(self, container_id: str, grace: int = DEFAULT_TERMINATION_GRACE) -> None:
        await self._run(self._remove, container_id, grace)

    def _remove(self, container_id: str, grace: int) -> None:
        api = self._api()
        try:
            api.stop(container_id, timeout=grace)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            log.warning("stopping %s failed (%s); removing it by force", container_id[:12], _explain(exc))
        try:
            api.remove_container(container_id, v=True, force=True)
        except docker.errors.NotFound:
            return
        except docker.errors.APIError as exc:
            if exc.status_code == 409 and "already in progress" in _explain(exc):
                return
            raise RuntimeFailure(f"cannot remove container: {_explain(exc)}") from exc

    async def container_address(self, container_id: str) -> str | None:
        with self._addresses_lock:
            if container_id in self._addresses:
                return self._addresses[container_id]
        address = await self._run(self._container_address, container_id)
        with self._addresses_lock:
            self._addresses[container_id] = address
        return address

    def _container_address(self, container_id: str) -> str | None:
        try:
            return container_address(self._api().inspect_container(container_id))
        except docker.errors.NotFound:
            raise RuntimeFailure("the container no longer exists") from None

    async def exec_probe(self, container_id: str, command: tuple[str, ...], timeout: float) -> int:
        return await self._run(self._exec_probe, container_id, command, timeout)

    def _exec_probe(self, container_id: str, command: tuple[str, ...], timeout: float) -> int:
        # Started detached and polled, so a hung command costs this thread `timeout` at most.
        # (The engine cannot kill an exec; a command that hangs keeps running, as in Kubernetes.)
        api = self._api()
        deadline = time.monotonic() + timeout
        exec_id = api.exec_create(container_id, list(command), stdout=False, stderr=False)["Id"]
        api.exec_start(exec_id, detach=True)
        wait, longest = EXEC_POLL_INTERVAL
        while True:
            info = api.exec_inspect(exec_id)
            if not info.get("Running") and info.get("ExitCode") is not None:
                return int(info["ExitCode"])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProbeTimeout(f"timed out after {timeout:g} s")
            time.sleep(min(wait, remaining))
            wait = min(wait * 2, longest)

    async def events(self) -> AsyncIterator[ContainerEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[ContainerEvent] = asyncio.Queue()
        stop = threading.Event()

        def deliver(event: ContainerEvent) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, event)
            except RuntimeError:  # the loop is closed: the agent is exiting
                stop.set()

        thread = threading.Thread(
            target=self._pump_events, args=(deliver, stop), name="berth-docker-events", daemon=True
        )
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
            self._close_streams()

    def _pump_events(self, deliver: Callable[[ContainerEvent], None], stop: threading.Event) -> None:
        """Read the engine's event stream forever (own thread), reconnecting when it breaks.

        Each (re)connection is followed by a RESYNC event, because whatever happened while
        the stream was down is lost; the caller lists the containers again.
        """
        delay = ReconnectDelay(base=0.5, cap=10.0)
        interrupted = False
        while not (stop.is_set() or self._closed.is_set()):
            client = stream = None
            try:
                client = self._new_client()
                stream = client.api.events(
                    decode=True, filters={"type": ["container"], "label": self._owner_filter}
                )
                with self._streams_lock:
                    self._streams.add(stream)
                with self._addresses_lock:
                    self._addresses.clear()  # events were missed: a cached address may be stale
                deliver(ContainerEvent(None, RESYNC))
                delay.reset()
                if interrupted:
                    log.info("watching engine events at %s again", self._base_url)
                interrupted = True  # from here on, any end of the loop is an interruption
                for event in stream:
                    if stop.is_set():
                        break
                    action = event.get("Action") or event.get("status") or ""
                    if watched(action):
                        container_id = event.get("id") or event["Actor"]["ID"]
                        if action in _ADDRESS_ACTIONS:
                            with self._addresses_lock:
                                self._addresses.pop(container_id, None)
                        deliver(ContainerEvent(container_id, action))
                if not (stop.is_set() or self._closed.is_set()):
                    log.warning("engine event stream at %s ended; reconnecting", self._base_url)
            except Exception as exc:
                interrupted = True
                if not (stop.is_set() or self._closed.is_set()):
                    log.warning("cannot watch engine events at %s: %s", self._base_url, exc)
            finally:
                if stream is not None:
                    with self._streams_lock:
                        self._streams.discard(stream)
                    _close_quietly(stream)
                if client is not None:
                    _close_quietly(client)
            stop.wait(delay.next())

    def _close_streams(self) -> None:
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            _close_quietly(stream)

    async def close(self) -> None:
        self._closed.set()
        self._close_streams()
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._client_lock:
            if self._client is not None:
                _close_quietly(self._client)
                self._client = None


def observed_from_inspect(data: dict[str, Any]) -> ObservedContainer:
    """An ObservedContainer from the engine's `inspect` answer (pure; tested with samples)."""
    state = data.get("State") or {}
    try:
        status = ContainerState(state.get("Status", "created"))
    except ValueError:
        status = ContainerState.EXITED
    config = data.get("Config") or {}
    stopped = status in (ContainerState.EXITED, ContainerState.DEAD, ContainerState.REMOVING)
    return ObservedContainer(
        id=data["Id"],
        name=str(data.get("Name", "")).lstrip("/"),
        state=status,
        labels=dict(config.get("Labels") or {}),
        image=str(config.get("Image", "")),
        exit_code=int(state.get("ExitCode", 0)) if stopped else None,
        error=str(state.get("Error") or ""),
        oom_killed=bool(state.get("OOMKilled")),
        started_at=parse_engine_time(state.get("StartedAt")),
        finished_at=parse_engine_time(state.get("FinishedAt")),
        health=_health(state.get("Health")),
    )


def _health(data: Any) -> Health | None:
    """The HEALTHCHECK's status; None when the image has none (no `Health`, or "none")."""
    if not isinstance(data, dict):
        return None
    try:
        return Health(data.get("Status"))
    except ValueError:
        return None


def container_address(data: dict[str, Any]) -> str | None:
    """The container's IP address from its `inspect` answer: where HTTP and TCP probes connect.

    A container on the host's network has none of its own: its ports are the host's, so
    the loopback address reaches them (the agent runs on that host).
    """
    config = data.get("HostConfig") or {}
    if config.get("NetworkMode") == "host":
        return "127.0.0.1"
    settings = data.get("NetworkSettings") or {}
    if settings.get("IPAddress"):
        return str(settings["IPAddress"])
    for network in (settings.get("Networks") or {}).values():
        if isinstance(network, dict):
            address = network.get("IPAddress") or network.get("GlobalIPv6Address")
            if address:
                return str(address)
    return None


def image_references(summaries: list[dict[str, Any]], limit: int = MAX_IMAGES) -> tuple[str, ...]:
    """The repo:tag references of the engine's `images` answer, newest image first, at most `limit`.

    Untagged (dangling) images have no reference a deployment could name, so they are left out.
    """
    newest_first = sorted(summaries, key=lambda s: int(s.get("Created") or 0), reverse=True)
    seen: dict[str, None] = {}
    for summary in newest_first:
        for tag in summary.get("RepoTags") or ():
            if isinstance(tag, str) and tag and not tag.startswith("<none>"):
                seen.setdefault(tag, None)
    return tuple(seen)[:limit]


def parse_engine_time(value: str | None) -> float | None:
    """Docker's RFC 3339 timestamps (nanoseconds, "Z") to Unix seconds; its zero time to None."""
    if not value or value.startswith("0001-01-01"):
        return None
    head, _, rest = value.partition(".")
    fraction = ""
    if rest:
        digits = len(rest) - len(rest.lstrip("0123456789"))
        fraction, rest = rest[:digits][:6], rest[digits:]
    text = head + (f".{fraction}" if fraction else "") + (rest or "")
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def _explain(exc: docker.errors.APIError) -> str:
    explanation = exc.explanation
    if isinstance(explanation, bytes):
        explanation = explanation.decode("utf-8", "replace")
    return str(explanation or exc)


def _close_quietly(closable: Any) -> None:
    try:
        closable.close()
    except Exception:  # noqa: S110 - best effort while shutting a stream down
        pass
