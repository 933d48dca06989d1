"""Log streams and exec sessions the control plane opened on this agent, for one connection.

Reads: stream frames (agent/stream_protocol.py), the reconciler's view of which container
runs which replica. Writes: `logs`, `exec.*` and `stream.end` frames through `send`.
Every stream has a lease the control plane renews (`streams.renew`); a stream whose lease
runs out is stopped, so a control plane that vanished without closing leaves nothing
running. When the connection ends, `close()` stops them all. Lines travel in batches of
what has accumulated while the previous frame was being sent (at most BATCH_LINES).
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent.logbatch import BATCH_LINES, LineHandoff
from agent.runtime import Runtime, RuntimeFailure
from agent.samples import ExecHandle
from agent.stream_protocol import (
    ExecInput,
    ExecOpen,
    ExecResize,
    LogsOpen,
    StreamClose,
    StreamFrame,
    StreamsRenew,
    exec_output_frame,
    exec_started_frame,
    logs_frame,
    stream_end_frame,
)

log = logging.getLogger(__name__)

MAX_STREAMS = 256  # per connection: a runaway control plane cannot make the agent open thousands
EXPIRY_CHECK_SECONDS = 1.0

Send = Callable[[dict[str, Any]], Awaitable[None]]
FindContainer = Callable[[str, str], str | None]


@dataclass
class _Stream:
    kind: str
    lease_until: float
    task: asyncio.Task[None] | None = None
    exec: ExecHandle | None = None
    stop: Callable[[], None] | None = None


class AgentStreams:
    def __init__(
        self,
        runtime: Runtime,
        find_container: FindContainer,
        send: Send,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime = runtime
        self._find = find_container
        self._send = send
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._expiry: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._streams)

    async def handle(self, frame: StreamFrame) -> None:
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_forever(), name="berth-stream-leases")
        if isinstance(frame, StreamsRenew):
            until = self._clock() + frame.lease
            for stream_id in frame.streams:
                if (stream := self._streams.get(stream_id)) is not None:
                    stream.lease_until = until
        elif isinstance(frame, StreamClose):
            self._stop(frame.stream)
        elif isinstance(frame, LogsOpen | ExecOpen):
            await self._open(frame)
        elif isinstance(frame, ExecInput):
            stream = self._streams.get(frame.stream)
            if stream is not None and stream.exec is not None:
                await self._guard(frame.stream, stream.exec.write(frame.data.encode("utf-8")))
        elif isinstance(frame, ExecResize):
            stream = self._streams.get(frame.stream)
            if stream is not None and stream.exec is not None:
                await self._guard(frame.stream, stream.exec.resize(frame.cols, frame.rows))

    async def _guard(self, stream_id: str, work: Awaitable[None]) -> None:
        try:
            await work
        except RuntimeFailure as exc:
            log.info("exec session %s: %s", stream_id, exc)

    async def _open(self, frame: LogsOpen | ExecOpen) -> None:
        if frame.stream in self._streams:
            return  # a repeated open (the control plane retried): the stream runs already
        if len(self._streams) >= MAX_STREAMS:
            await self._send(
                stream_end_frame(frame.stream, f"too many streams on this node (at most {MAX_STREAMS})")
            )
            return
        container_id = self._find(frame.namespace, frame.replica)
        if container_id is None:
            await self._send(
                stream_end_frame(
                    frame.stream, f"replica {frame.namespace}/{frame.replica} has no container here"
                )
            )
            return
        stream = _Stream("logs" if isinstance(frame, LogsOpen) else "exec", self._clock() + frame.lease)
        self._streams[frame.stream] = stream
        work = (
            self._run_logs(frame, container_id)
            if isinstance(frame, LogsOpen)
            else self._run_exec(frame, container_id)
        )
        stream.task = asyncio.create_task(
            self._finish(frame.stream, work), name=f"berth-stream-{frame.stream}"
        )

    async def _finish(self, stream_id: str, work: Awaitable[tuple[str | None, int | None]]) -> None:
        error: str | None
        code: int | None = None
        try:
            error, code = await work
        except asyncio.CancelledError:
            self._cleanup(stream_id)
            raise
        except RuntimeFailure as exc:
            error = str(exc)
        except Exception as exc:
            log.exception("stream %s failed", stream_id)
            error = f"agent error: {exc}"
        self._cleanup(stream_id)
        try:
            await self._send(stream_end_frame(stream_id, error, code))
        except Exception as exc:  # the connection is going away; nobody to tell
            log.debug("could not send the end of stream %s: %s", stream_id, exc)

    def _cleanup(self, stream_id: str) -> None:
        stream = self._streams.pop(stream_id, None)
        if stream is not None:
            if stream.stop is not None:
                stream.stop()
            if stream.exec is not None:
                stream.exec.close()

    async def _run_logs(self, frame: LogsOpen, container_id: str) -> tuple[str | None, int | None]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(ready.set)
            except RuntimeError:  # the loop is closed: the agent is exiting
                handoff.close()

        handoff = LineHandoff(wake)
        self._streams[frame.stream].stop = await self._runtime.open_logs(
            container_id, frame.since, frame.tail, frame.follow, handoff
        )
        await self._send(logs_frame(frame.stream, []))  # opened: the control plane stops waiting
        while True:
            await ready.wait()
            ready.clear()
            while batch := handoff.take(BATCH_LINES):
                await self._send(logs_frame(frame.stream, batch))
            if handoff.finished and not len(handoff):
                return handoff.error, None

    async def _run_exec(self, frame: ExecOpen, container_id: str) -> tuple[str | None, int | None]:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

        def on_exit(code: int | None) -> None:
            if not exited.done():
                exited.set_result(code)
            queue.put_nowait(b"")  # wakes the sender

        stream = self._streams[frame.stream]
        stream.exec = await self._runtime.open_exec(
            container_id, frame.command, frame.cols, frame.rows, queue.put_nowait, on_exit
        )
        await self._send(exec_started_frame(frame.stream))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        while True:
            chunk = await queue.get()
            while not queue.empty() and len(chunk) < 65536:  # what piled up goes in one frame
                chunk += queue.get_nowait()
            text = decoder.decode(chunk)
            if text:
                await self._send(exec_output_frame(frame.stream, text))
            if exited.done() and queue.empty():
                return None, exited.result()

    def _stop(self, stream_id: str) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            return
        if stream.exec is not None:
            stream.exec.close()  # the exec ends; its exit code still goes out in stream.end
        elif stream.stop is not None:
            stream.stop()
            if stream.task is not None:
                stream.task.cancel()
        elif stream.task is not None:
            stream.task.cancel()

    async def _expire_forever(self) -> None:
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = self._clock()
            for stream_id, stream in list(self._streams.items()):
                if stream.lease_until < now:
                    log.info("%s stream %s expired: its lease was not renewed", stream.kind, stream_id)
                    self._stop(stream_id)

    async def close(self) -> None:
        """Stop every stream (the connection is gone: nobody can receive them)."""
        if self._expiry is not None:
            self._expiry.cancel()
        tasks = [s.task for s in self._streams.values() if s.task is not None]
        for stream_id in list(self._streams):
            stream = self._streams[stream_id]
            if stream.task is not None:
                stream.task.cancel()
            self._cleanup(stream_id)
        await asyncio.gather(*tasks, *([self._expiry] if self._expiry else []), return_exceptions=True)
