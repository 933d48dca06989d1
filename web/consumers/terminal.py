"""A web terminal into a running replica: docker exec with a TTY, through the node's agent.

/ws/namespaces/{ns}/replicas/{replica}/terminal/. The client opens with
`{"type": "open", "shell": "sh", "cols": 80, "rows": 24}` (plus `"token"` for API clients),
then sends `{"type": "input", "data": "..."}` and `{"type": "resize", "cols": .., "rows": ..}`;
it receives `{"type": "started"}`, `{"type": "output", "data": "..."}` and finally
`{"type": "exit", "code": 0, "error": null}`, after which the socket closes. Only users
`can_exec` may open one (4403 otherwise); every session is audited in TerminalSession.
Output waits in a bounded buffer: a stalled browser loses output (with a marker), the
agent never waits for it.
"""

from __future__ import annotations

import asyncio

from channels.db import database_sync_to_async
from django.utils import timezone

from orchestrator.models import Replica
from web.consumers.viewer import CLOSE_FORBIDDEN, BadRequest, ViewerConsumer
from web.models import TerminalSession
from web.permissions import can_exec, can_view_namespace

SHELLS = {"sh": "/bin/sh", "bash": "/bin/bash", "ash": "/bin/ash", "zsh": "/bin/zsh"}
MAX_COLS, MAX_ROWS = 1000, 500
MAX_INPUT = 64 * 1024
MAX_PENDING_OUTPUT = 1 << 20  # characters waiting for a slow browser


def validate_size(content: dict) -> tuple[int, int]:
    cols, rows = content.get("cols"), content.get("rows")
    for field, value, top in (("cols", cols, MAX_COLS), ("rows", rows, MAX_ROWS)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise BadRequest(field, f"{field} must be a whole number between 1 and {top}")
    return cols, rows


def start_session(user, namespace: str, replica_name: str, command: list[str], client: str):
    """(TerminalSession, node id) for a running replica the user may exec into; raises BadRequest."""
    replica = (
        Replica.objects.select_related("namespace", "deployment", "node")
        .filter(namespace__name=namespace, name=replica_name)
        .first()
    )
    if replica is None or not can_view_namespace(user, replica.namespace):
        raise BadRequest("replica", f"replica {replica_name!r} not found in namespace {namespace!r}")
    if not can_exec(user, replica.namespace):
        raise PermissionError("you may not open a terminal here (permission web.exec_replica)")
    if replica.phase != Replica.Phase.RUNNING or replica.node is None or not replica.container_id:
        raise BadRequest("replica", f"replica {replica_name} is not running ({replica.phase})")
    session = TerminalSession.objects.create(
        user=user,
        username=user.get_username(),
        namespace=namespace,
        deployment=replica.deployment.name,
        replica=replica.name,
        node=replica.node.name,
        container_id=replica.container_id,
        command=command,
        client=client,
    )
    return session, replica.node_id


def finish_session(session_id: int, exit_code: int | None, reason: str) -> None:
    TerminalSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
        ended_at=timezone.now(), exit_code=exit_code, end_reason=reason[:200]
    )


class TerminalConsumer(ViewerConsumer):
    async def connect(self):
        kwargs = self.scope["url_route"]["kwargs"]
        self.namespace, self.replica = kwargs["namespace"], kwargs["replica"]
        self.session_id: int | None = None
        self.stream: str | None = None
        self.node_id: int | None = None
        self.pending: list[str] = []
        self.pending_chars = 0
        self.dropped_chars = 0
        self.wake = asyncio.Event()
        self.sender: asyncio.Task | None = None
        await super().connect()

    async def on_message(self, content):
        kind = content["type"]
        if kind == "open":
            await self._open(content)
        elif self.stream is None:
            raise BadRequest("type", "open the terminal first ({'type': 'open', ...})")
        elif kind == "input":
            data = content.get("data")
            if not isinstance(data, str) or len(data) > MAX_INPUT:
                raise BadRequest("data", f"input must be a string of at most {MAX_INPUT} characters")
            await self.forward(self.node_id, {"type": "exec.input", "stream": self.stream, "data": data})
        elif kind == "resize":
            cols, rows = validate_size(content)
            await self.forward(
                self.node_id, {"type": "exec.resize", "stream": self.stream, "cols": cols, "rows": rows}
            )
        else:
            raise BadRequest("type", "a terminal takes 'open', 'input' and 'resize' messages")

    async def _open(self, content):
        if self.session_id is not None:
            raise BadRequest("type", "this terminal is open already")
        shell = content.get("shell", "sh")
        if shell not in SHELLS:
            raise BadRequest("shell", f"shell must be one of {', '.join(SHELLS)}")
        cols, rows = validate_size(content)
        command = [SHELLS[shell]]
        client = self.scope.get("client") or ("", 0)
        try:
            session, self.node_id = await database_sync_to_async(start_session)(
                self.user, self.namespace, self.replica, command, str(client[0] or "")
            )
        except PermissionError as exc:
            await self.send_json({"type": "error", "field": "permission", "message": str(exc)})
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.session_id = session.pk
        self.sender = asyncio.create_task(self._send_forever())
        self.stream = await self.open_stream(
            self.node_id,
            {
                "type": "exec.open",
                "namespace": self.namespace,
                "replica": self.replica,
                "command": command,
                "cols": cols,
                "rows": rows,
            },
        )
        await self.send_json({"type": "opening", "session": session.pk})

    async def on_stream(self, stream, frame, dropped):
        kind = frame.get("type")
        if kind == "exec.started":
            await self.send_json({"type": "started"})
        elif kind == "exec.output":
            data = frame.get("data") or ""
            if self.pending_chars + len(data) > MAX_PENDING_OUTPUT:
                self.dropped_chars += len(data)
            else:
                if self.dropped_chars:
                    self.pending.append(f"\r\n[… {self.dropped_chars} characters dropped]\r\n")
                    self.dropped_chars = 0
                self.pending.append(data)
                self.pending_chars += len(data)
            self.wake.set()
        elif kind in ("stream.end", "stream.error"):
            self.stream = None
            code, error = frame.get("exit_code"), frame.get("error")
            await self._flush()
            await database_sync_to_async(finish_session)(self.session_id, code, error or "exited")
            await self.send_json({"type": "exit", "code": code, "error": error})
            await self.close()

    async def _flush(self):
        while self.pending:
            chunk, self.pending = "".join(self.pending), []
            self.pending_chars = 0
            await self.send_json({"type": "output", "data": chunk})

    async def _send_forever(self):
        while True:
            await self.wake.wait()
            self.wake.clear()
            await self._flush()

    async def on_disconnect(self):
        if self.sender is not None:
            self.sender.cancel()
        if self.session_id is not None:
            await database_sync_to_async(finish_session)(
                self.session_id, None, "the browser closed the terminal"
            )
