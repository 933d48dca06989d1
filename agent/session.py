"""The agent's WebSocket session with the control plane, kept alive forever.

Reads: the node credential (enroll.Enroller), the engine's info, the reconciler's status.
Writes: each accepted `desired` set into the reconciler. One connection at a time: hello,
welcome, then heartbeats and status frames out, desired frames in. Any failure ends the
connection and a new one is attempted after an exponential back-off with full jitter
(0.5 s doubling to 30 s), reset after a healthy session. A refused credential (HTTP 403 at
the handshake) triggers a new enrollment when a join token is configured. A busy control
plane (HTTP 503 or 429 at the handshake: too many agents joining at once) is tried again
after its Retry-After, jittered.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from agent import __version__
from agent.config import AgentConfig
from agent.credential import Credential, credential_path
from agent.enroll import (
    REFUSED_RETRY_SECONDS,
    Enroller,
    EnrollmentError,
    EnrollmentRefused,
    obtain_credential,
)
from agent.keepalive import QuietKeepaliveConnection
from agent.metrics import MetricsSampler
from agent.protocol import (
    DEFAULT_HEARTBEAT_INTERVAL,
    DesiredSet,
    EntryCache,
    ProtocolError,
    Settings,
    Welcome,
    complete_set,
    desired_request_frame,
    heartbeat_frame,
    hello_frame,
    parse_frame,
    status_frame,
)
from agent.reconciler import Reconciler
from agent.reconnect import ReconnectDelay
from agent.reporter import StatusReporter
from agent.runtime import EngineInfo, Runtime, RuntimeFailure
from agent.stream_protocol import STREAM_FRAME_CLASSES, StreamFrameError, stream_error_frame
from agent.streams import AgentStreams

log = logging.getLogger(__name__)

HEALTHY_AFTER = 10.0  # a session welcomed and kept this long resets the back-off
FULL_SET_REQUEST_EVERY = 2.0  # seconds between two requests for the full desired set
PARTIAL_STATUS = "status.partial"  # the welcome feature of control planes that take partial status
STATUS_BEATS = "status.heartbeat"  # ... and of those that count a status frame as a heartbeat
MAX_FRAME_BYTES = 16 * 1024 * 1024  # a desired set for a busy node can be large
# Longer than the control plane's own ping interval (uvicorn's 20 s), so that a control
# plane that pings is never pinged back; a silent one is dropped after 50 s at most (the
# ping, the pong's timeout, then close_timeout for a close that is never answered).
PING_WHEN_QUIET, PING_TIMEOUT = 25.0, 20.0


class Outcome(enum.Enum):
    HEALTHY = "healthy"
    FAILED = "failed"
    REFUSED = "refused"  # the credential was refused at the handshake
    WELCOMED = "welcomed"  # welcomed, but ended before it counted as healthy
    BUSY = "busy"  # the control plane said to come back later (HTTP 503 or 429, or close 1013)
    UNANSWERED = "unanswered"  # no answer to the handshake within the open timeout


OPEN_TIMEOUT = 10.0  # seconds for the TCP connection and the WebSocket handshake
BUSY_STATUSES = (429, 503)
TRY_AGAIN_LATER = 1013  # the WebSocket close code of the same
BUSY_DEFAULT_WAIT = 5.0  # when a busy answer names no Retry-After
BUSY_MAX_WAIT = 30.0  # the back-off's own cap: a proxy's long Retry-After is not waited out


def busy_wait(retry_after: str | None, rng: Callable[[], float] = random.random) -> float:
    """How long to wait after a busy answer: its Retry-After (seconds; an HTTP date or
    nonsense counts as absent), capped, times a uniform draw in [0.5, 1.5), so that a fleet
    refused together does not come back together."""
    try:
        seconds = float(retry_after)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = BUSY_DEFAULT_WAIT
    if not seconds >= 0:  # negative, or NaN
        seconds = BUSY_DEFAULT_WAIT
    return min(seconds, BUSY_MAX_WAIT) * (0.5 + rng())


class Session:
    def __init__(
        self,
        config: AgentConfig,
        enroller: Enroller,
        reconciler: Reconciler,
        reporter: StatusReporter,
        runtime: Runtime,
        engine: EngineInfo,
        *,
        delay: ReconnectDelay | None = None,
    ) -> None:
        self._config = config
        self._enroller = enroller
        self._reconciler = reconciler
        self._reporter = reporter
        self._runtime = runtime
        self._engine = engine
        self._delay = delay or ReconnectDelay(base=0.5, cap=30.0)
        self._metrics = MetricsSampler(runtime, reconciler.statuses)
        self._full_set_requested_at = float("-inf")
        self._heartbeat_every = DEFAULT_HEARTBEAT_INTERVAL  # this connection's, from its welcome
        self._heartbeat_wake: asyncio.Future[bool] | None = None  # the heartbeat's wait, if any
        self._status_beats = False  # this connection's control plane counts status frames as beats
        self._status_sent_at = float("-inf")  # when the last status frame went (monotonic)
        self._entries: EntryCache = {}  # status frame entries, rebuilt only for changed replicas
        self._retry_after: str | None = None  # of the last busy answer

    async def run_forever(self) -> None:
        """Connect, serve, reconnect; returns only when cancelled."""
        while True:
            credential = await obtain_credential(self._enroller)
            outcome = await self._connect(credential)
            if outcome is Outcome.HEALTHY:
                self._delay.reset()
            elif outcome is Outcome.WELCOMED:
                self._delay.hurry()  # the server is there: a restart, not an outage
            elif outcome is Outcome.REFUSED and not await self._after_refusal():
                continue  # _after_refusal already waited
            if outcome in (Outcome.BUSY, Outcome.UNANSWERED):
                # Asked for a moment, or too busy to answer: its wait, not the back-off's.
                if outcome is Outcome.BUSY:
                    self._delay.hurry()  # the server is there
                wait = busy_wait(self._retry_after)
            else:
                wait = self._delay.next()
            log.info("reconnecting in %.1f s", wait)
            await asyncio.sleep(wait)

    async def _after_refusal(self) -> bool:
        """Handle a refused credential; False if it already waited before the next attempt."""
        if not self._enroller.can_enroll:
            log.error(
                "the control plane refused the credential in %s (HTTP 403): this node was removed or "
                "re-enrolled elsewhere. To rejoin, restart the agent with --join-token (or "
                "BERTH_JOIN_TOKEN) set to a valid join token. Retrying every %.0f s.",
                credential_path(self._config.state_dir),
                REFUSED_RETRY_SECONDS,
            )
            await asyncio.sleep(REFUSED_RETRY_SECONDS)
            return False
        log.warning("the control plane refused the node credential; enrolling again with the join token")
        try:
            await self._enroller.rotate()
        except EnrollmentRefused as exc:
            log.error(
                "%s; give a valid join token with --join-token or BERTH_JOIN_TOKEN; retrying in %.0f s",
                exc,
                REFUSED_RETRY_SECONDS,
            )
            await asyncio.sleep(REFUSED_RETRY_SECONDS)
            return False
        except (EnrollmentError, OSError) as exc:
            log.warning("%s", exc)
        return True

    async def _connect(self, credential: Credential) -> Outcome:
        url = self._config.session_url
        try:
            async with connect(
                url,
                additional_headers={"Authorization": f"Bearer {credential.credential}"},
                user_agent_header=f"berth-agent/{__version__}",
                open_timeout=OPEN_TIMEOUT,
                # A ping after this long without a byte from the control plane (which pings
                # every 20 s itself), a pong within PING_TIMEOUT (agent/keepalive.py).
                ping_interval=PING_WHEN_QUIET,
                ping_timeout=PING_TIMEOUT,
                create_connection=QuietKeepaliveConnection,
                close_timeout=5,
                max_size=MAX_FRAME_BYTES,
                compression=None,
            ) as ws:
                return await self._serve(ws, url)
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                log.warning("%s refused the node credential (HTTP %d)", url, code)
                return Outcome.REFUSED
            if code in BUSY_STATUSES:
                self._retry_after = exc.response.headers.get("Retry-After")
                log.info("%s is busy (HTTP %d, Retry-After %s)", url, code, self._retry_after)
                return Outcome.BUSY
            log.warning("%s refused the connection: HTTP %d", url, code)
        except TimeoutError:
            # No answer within the open timeout: an overloaded control plane (its backlog of
            # handshakes) or an unreachable one. Knocking again within a second would only
            # add to that backlog: wait as for a busy answer without a Retry-After.
            log.warning("cannot connect to %s: timed out; trying again in a few seconds", url)
            self._retry_after = None
            return Outcome.UNANSWERED
        except (OSError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            log.warning("cannot connect to %s: %s", url, str(exc) or type(exc).__name__)
        return Outcome.FAILED

    async def _serve(self, ws: ClientConnection, url: str) -> Outcome:
        log.info("connected to %s as node %s", url, self._reconciler.node)
        try:
            self._engine = await self._runtime.engine_info()
        except RuntimeFailure as exc:
            log.warning("cannot refresh engine info, sending the last known: %s", exc)
        helpers: list[asyncio.Task[None]] = []
        streams = AgentStreams(self._runtime, self._container_of, self._sender(ws))
        welcomed_at: float | None = None
        reason = "connection closed"
        try:
            await ws.send(json.dumps(hello_frame(self._engine, self._config.labels)))
            async for message in ws:
                try:
                    frame = parse_frame(message)
                except StreamFrameError as exc:
                    log.warning("refusing a stream frame from the control plane: %s", exc)
                    await ws.send(json.dumps(stream_error_frame(exc.stream, str(exc))))
                    continue
                except ProtocolError as exc:
                    log.warning("ignoring a frame from the control plane: %s", exc)
                    continue
                if isinstance(frame, Welcome):
                    if frame.node != self._reconciler.node:
                        log.warning(
                            "the control plane calls this node %r, its credential says %r",
                            frame.node,
                            self._reconciler.node,
                        )
                    if welcomed_at is None:
                        welcomed_at = time.monotonic()
                        log.info(
                            "welcomed as node %s (heartbeat every %.1f s)",
                            frame.node,
                            frame.heartbeat_interval,
                        )
                        self._heartbeat_every = frame.heartbeat_interval
                        self._status_beats = STATUS_BEATS in frame.features
                        helpers.append(self._guard(ws, self._heartbeat(ws), "heartbeat"))
                        helpers.append(
                            self._guard(
                                ws,
                                self._reporter.run(
                                    self._status_sender(ws),
                                    self._snapshot,
                                    lambda: self._reconciler.ready,
                                    partial=PARTIAL_STATUS in frame.features,
                                ),
                                "status",
                            )
                        )
                        helpers.append(self._guard(ws, self._metrics.run(self._sender(ws)), "metrics"))
                    self._reporter.mark_dirty()  # the control plane wants the full picture now
                elif isinstance(frame, Settings):
                    interval = frame.heartbeat_interval
                    if interval is not None and interval != self._heartbeat_every:
                        log.info("heartbeat every %.1f s from now on", interval)
                        self._heartbeat_every = interval
                        if self._heartbeat_wake is not None:
                            _resolve(self._heartbeat_wake, False)  # the wait under way counts again
                elif isinstance(frame, DesiredSet):
                    if request := self._on_desired(frame):
                        await ws.send(json.dumps(request))
                elif isinstance(frame, STREAM_FRAME_CLASSES):  # logs, exec, leases (agent/streams.py)
                    await streams.handle(frame)
                else:
                    log.debug("ignoring a %r frame", frame.type)
            reason = f"closed by the control plane (code {ws.close_code}, {ws.close_reason or 'no reason'})"
        except ConnectionClosed as exc:
            reason = str(exc)
        finally:
            await streams.close()
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        log.info("disconnected from %s: %s", url, reason)
        if welcomed_at is not None and time.monotonic() - welcomed_at >= HEALTHY_AFTER:
            return Outcome.HEALTHY
        if welcomed_at is None and ws.close_code == TRY_AGAIN_LATER:
            self._retry_after = None  # a server without HTTP denial answers busy this way
            return Outcome.BUSY
        return Outcome.FAILED if welcomed_at is None else Outcome.WELCOMED

    def _on_desired(self, frame: DesiredSet) -> dict[str, Any] | None:
        """Apply a desired frame; returns a request for the full set to send, if it needs one."""
        previous = self._reconciler.generation
        if frame.generation < previous:
            log.info(
                "ignoring desired generation %d: generation %d is already applied", frame.generation, previous
            )
            return None
        replicas, missing = complete_set(frame, self._reconciler.desired_replica)
        if missing:
            # A frame that carried them was lost (or this agent restarted): keep the set
            # applied until the full one comes.
            now = time.monotonic()
            if now - self._full_set_requested_at < FULL_SET_REQUEST_EVERY:
                return None
            self._full_set_requested_at = now
            namespace, name = missing[0]
            log.info(
                "desired generation %d names %d replica(s) this agent has no entry for (%s/%s...); "
                "asking for the full set",
                frame.generation,
                len(missing),
                namespace,
                name,
            )
            return desired_request_frame(frame.generation, len(missing))
        self._reconciler.apply_desired(frame.generation, replicas)
        log.info("desired generation %d: %d replica(s)", frame.generation, len(replicas))
        if frame.names is None:
            # A full set (on connect, or after the node was NotReady and its replicas' states
            # were set Unknown): the control plane wants every replica's state in return.
            self._reporter.want_full()
        return None

    def _sender(self, ws: ClientConnection) -> Callable[[dict[str, Any]], Awaitable[None]]:
        async def send(frame: dict[str, Any]) -> None:
            await ws.send(json.dumps(frame))

        return send

    def _container_of(self, namespace: str, replica: str) -> str | None:
        """The container running `replica` on this node now, for log streams and exec sessions."""
        for status in self._reconciler.statuses():
            if status.namespace == namespace and status.name == replica:
                return status.container_id
        return None

    def _snapshot(self) -> dict[str, Any]:
        return status_frame(self._reconciler.generation, self._reconciler.statuses(), self._entries)

    def _status_sender(self, ws: ClientConnection) -> Callable[[str], Awaitable[None]]:
        async def send(message: str) -> None:
            await ws.send(message)
            self._status_sent_at = time.monotonic()

        return send

    async def _heartbeat(self, ws: ClientConnection) -> None:
        """A heartbeat every `_heartbeat_every` seconds; a new interval applies at once, to
        the wait under way too (counted from the last beat). A status frame sent meanwhile
        is the beat, when the control plane says so (STATUS_BEATS): the wait starts again
        from it. The wait is a plain timer, as cheap as a sleep: a hollow fleet runs
        thousands of these. When the timer fires the beat goes without reading the clock
        again, as it did after a sleep."""
        frame = json.dumps(heartbeat_frame())
        loop = asyncio.get_running_loop()
        last = time.monotonic()
        while True:
            remaining = last + self._heartbeat_every - time.monotonic()
            if remaining > 0:
                wake = self._heartbeat_wake = loop.create_future()
                timer = loop.call_later(remaining, _resolve, wake, True)
                try:
                    due = await wake
                finally:
                    timer.cancel()
                if not due:
                    continue  # the interval changed: wait again, counted from the last beat
            if self._status_beats and self._status_sent_at > last:
                last = self._status_sent_at  # a status frame went meanwhile: it was the beat
                continue
            await ws.send(frame)
            last = time.monotonic()

    def _guard(self, ws: ClientConnection, work: Awaitable[None], what: str) -> asyncio.Task[None]:
        """Run a helper of the connection; if it breaks, end the connection so it starts over clean."""

        async def guarded() -> None:
            try:
                await work
            except ConnectionClosed:
                pass
            except Exception:
                log.exception("%s sender failed; reconnecting", what)
                await ws.close(code=1011, reason="agent error")

        return asyncio.create_task(guarded(), name=f"berth-{what}")


def _resolve(future: asyncio.Future[bool], due: bool) -> None:
    """End a heartbeat's wait: `due` when its time is up, False when the interval changed."""
    if not future.done():
        future.set_result(due)
