"""Docker streams: log follow, exec with a TTY and stats, for DockerRuntime (a mixin).

Each log stream and exec session has its own engine connection, read by its own thread
(the SDK blocks); what it reads reaches the asyncio loop through `call_soon_threadsafe`
(exec output) or a LineHandoff (log lines). Stopping a stream shuts its socket down,
which ends the blocked read at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

from agent.logbatch import ChunkedDecoder, FrameDecoder, LineHandoff, engine_since
from agent.runtime import RuntimeFailure
from agent.samples import (
    ContainerSample,
    ExecHandle,
    NodeSample,
    container_sample_from_stats,
    parse_diskstats,
    parse_meminfo,
    parse_net_dev,
    parse_proc_stat,
)

log = logging.getLogger(__name__)
PROC = Path("/proc")


def _raw_socket(api: docker.APIClient, response: Any) -> socket.socket:
    sock = api._get_raw_response_socket(response)
    return getattr(sock, "_sock", sock)


def _shutdown(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _body_pieces(response: Any) -> Iterator[bytes]:
    """The response body in the pieces the socket delivers (never waiting for a full buffer)."""
    fp = getattr(getattr(response.raw, "_fp", None), "fp", None)
    if getattr(response.raw._fp, "chunked", False) and fp is not None:  # the engine's usual answer
        chunked = ChunkedDecoder()
        while not chunked.done and (data := fp.read1(65536)):
            if body := chunked.feed(data):
                yield body
        return
    while data := response.raw.read1(65536):
        yield data


class DockerStreamsMixin:
    """Needs `_new_client()`, `_run(fn, *args)` and `_api()` from DockerRuntime."""

    # -- logs ----------------------------------------------------------------------------

    async def open_logs(
        self, container_id: str, since: str | None, tail: int | None, follow: bool, handoff: LineHandoff
    ) -> Callable[[], None]:
        state: dict[str, Any] = {"sock": None, "client": None}
        stop = threading.Event()
        thread = threading.Thread(
            target=self._pump_logs,
            args=(container_id, since, tail, follow, handoff, state, stop),
            name=f"berth-logs-{container_id[:12]}",
            daemon=True,
        )
        thread.start()

        def cancel() -> None:
            stop.set()
            handoff.close()
            _shutdown(state["sock"])

        return cancel

    def _pump_logs(
        self,
        container_id: str,
        since: str | None,
        tail: int | None,
        follow: bool,
        handoff: LineHandoff,
        state: dict[str, Any],
        stop: threading.Event,
    ) -> None:
        client = None
        try:
            client = self._new_client()
            api = client.api
            params: dict[str, Any] = {
                "stdout": 1,
                "stderr": 1,
                "timestamps": 1,
                "follow": 1 if follow else 0,
                "tail": "all" if tail is None else tail,
            }
            if since:
                params["since"] = engine_since(since)
            tty = bool((api.inspect_container(container_id).get("Config") or {}).get("Tty"))
            response = api._get(api._url("/containers/{0}/logs", container_id), params=params, stream=True)
            api._raise_for_status(response)
            sock = state["sock"] = _raw_socket(api, response)
            sock.settimeout(None)
            if stop.is_set():
                return
            decoder = FrameDecoder(tty)  # a TTY container: one raw stream, everything is stdout
            for chunk in _body_pieces(response):
                if (lines := decoder.feed(chunk)) and not handoff.put_many(lines):
                    return
            if (rest := decoder.flush()) and not handoff.put_many(rest):
                return
            handoff.finish()
        except docker.errors.NotFound:
            handoff.finish("the container no longer exists")
        except docker.errors.APIError as exc:
            handoff.finish(f"the engine refused the log stream: {exc.explanation or exc}")
        except Exception as exc:
            if stop.is_set():
                handoff.finish()
            else:
                log.warning("log stream of %s broke: %s", container_id[:12], exc)
                handoff.finish(f"the log stream broke: {exc}")
        finally:
            if client is not None:
                try:
                    client.close()
                except Exception:  # noqa: S110 - best effort
                    pass

    # -- exec ------------------------------------------------------------------------------

    async def open_exec(
        self,
        container_id: str,
        command: tuple[str, ...],
        cols: int,
        rows: int,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int | None], None],
    ) -> ExecHandle:
        loop = asyncio.get_running_loop()

        def start() -> tuple[docker.DockerClient, str, socket.socket]:
            client = self._new_client()
            try:
                api = client.api
                exec_id = api.exec_create(
                    container_id,
                    list(command),
                    stdin=True,
                    tty=True,
                    environment={"TERM": "xterm-256color"},
                )["Id"]
                raw = api.exec_start(exec_id, tty=True, socket=True)
                sock = getattr(raw, "_sock", raw)
                sock.settimeout(None)
                try:
                    api.exec_resize(exec_id, height=rows, width=cols)
                except docker.errors.APIError as exc:  # the process may have exited at once
                    log.debug("first resize of exec %s failed: %s", exec_id[:12], exc)
                return client, exec_id, sock
            except Exception:
                client.close()
                raise

        try:
            client, exec_id, sock = await self._run(start)
        except docker.errors.NotFound as exc:
            raise RuntimeFailure("the container no longer exists") from exc
        handle = _DockerExec(self, client, exec_id, sock)

        def deliver(callback: Callable[..., None], *args: Any) -> None:
            try:
                loop.call_soon_threadsafe(callback, *args)
            except RuntimeError:  # the loop is closed: the agent is exiting
                pass

        def pump() -> None:
            try:
                while chunk := sock.recv(65536):
                    deliver(on_output, chunk)
            except OSError:
                pass
            code = None
            try:
                code = client.api.exec_inspect(exec_id).get("ExitCode")
            except Exception:  # noqa: S110 - the engine may be gone; no code then
                pass
            handle.close()
            deliver(on_exit, code)

        threading.Thread(target=pump, name=f"berth-exec-{exec_id[:12]}", daemon=True).start()
        return handle

    # -- stats -----------------------------------------------------------------------------

    async def container_samples(self, container_ids: list[str]) -> dict[str, ContainerSample]:
        async def one(container_id: str) -> tuple[str, ContainerSample | None]:
            try:
                stats = await self._run(
                    lambda: self._api().stats(container_id, stream=False, one_shot=True)  # type: ignore[attr-defined]
                )
            except RuntimeFailure:
                return container_id, None
            if not (stats.get("cpu_stats") or {}).get("cpu_usage"):
                return container_id, None  # not running
            return container_id, container_sample_from_stats(stats)

        results = await asyncio.gather(*(one(c) for c in container_ids))
        return {cid: sample for cid, sample in results if sample is not None}

    async def node_sample(self) -> NodeSample | None:
        def read() -> NodeSample:
            busy, total = parse_proc_stat((PROC / "stat").read_text())
            used, memory_total = parse_meminfo((PROC / "meminfo").read_text())
            rx, tx = parse_net_dev((PROC / "net/dev").read_text())
            try:
                block_read, block_write = parse_diskstats((PROC / "diskstats").read_text())
            except OSError:
                block_read = block_write = 0
            return NodeSample(busy, total, used, memory_total, rx, tx, block_read, block_write)

        try:
            return await asyncio.get_running_loop().run_in_executor(None, read)
        except (OSError, ValueError) as exc:
            log.warning("cannot read the server's counters from /proc: %s", exc)
            return None


class _DockerExec(ExecHandle):
    def __init__(self, runtime: Any, client: docker.DockerClient, exec_id: str, sock: socket.socket) -> None:
        self._runtime = runtime
        self._client = client
        self._exec_id = exec_id
        self._sock = sock
        self._closed = False

    async def write(self, data: bytes) -> None:
        if not self._closed:
            await self._runtime._run(self._sock.sendall, data)

    async def resize(self, cols: int, rows: int) -> None:
        if not self._closed:
            await self._runtime._run(
                lambda: self._client.api.exec_resize(self._exec_id, height=rows, width=cols)
            )

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _shutdown(self._sock)
        try:
            self._sock.close()
            self._client.close()
        except Exception:  # noqa: S110 - best effort
            pass
