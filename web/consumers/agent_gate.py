"""The agents' door: ASGI middleware in front of the agents' consumer that admits at most
AGENT_JOINS_IN_FLIGHT joins per web process and answers the other handshakes at once with
HTTP 503 and a Retry-After (the decisions: web/consumers/admission.py).

It runs before channels builds a consumer: a refused knock cost 430 to 470 µs of a web
process through the consumer (its channel, its two pumps, its dispatch) and 15 to 20 µs
here, and a fleet reconnecting at once knocks thousands of times a second. A known agent's
knock is its node's heartbeat, whether it is admitted or not.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from channels.db import database_sync_to_async
from django.conf import settings

from nodes import heartbeats
from nodes.services import node_ids_by_credential
from nodes.tokens import NODE_PREFIX, hash_token
from web.consumers.admission import CredentialIndex, JoinGate, retry_after

log = logging.getLogger(__name__)

SLOT = "berth.join_slot"  # the scope key the admitted join's slot travels in
DIGEST = "berth.credential_digest"  # ... and its credential's hash, computed once
DENIAL = "websocket.http.response"  # the ASGI extension for answering a handshake with HTTP
TRY_AGAIN_LATER = 1013  # the close code, where a server cannot answer with HTTP

# uvicorn's websockets-sansio protocol logs this at ERROR after every handshake answered with
# HTTP (the denial extension), though the answer went out (uvicorn PR #3138, open): one
# ERROR line per refused knock, thousands a minute while a fleet reconnects.
UVICORN_DENIAL_ERROR = "ASGI callable returned without completing handshake."
# Set in the handshake's own task (uvicorn awaits the application in it): the filter below
# drops that line for the handshakes this gate answered, and no other.
_answered_with_http: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "berth_answered_with_http", default=False
)


class DenialLogFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_answered_with_http.get() and record.msg == UVICORN_DENIAL_ERROR)


logging.getLogger("uvicorn.error").addFilter(DenialLogFilter())

_gates: dict[int, JoinGate] = {}  # by limit (tests change the setting)
credentials = CredentialIndex()
# A thread of its own: the read must not queue behind the joins whose agents it recognises.
_credential_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="berth-credentials")
_reading: set[asyncio.Task] = set()


def gate() -> JoinGate:
    limit = settings.AGENT_JOINS_IN_FLIGHT
    found = _gates.get(limit)
    if found is None:
        found = _gates[limit] = JoinGate(limit)
    return found


def bearer(scope) -> str:
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
    return ""


def credential_digest(scope) -> str | None:
    """The hash of the node credential the handshake carries, if it carries one."""
    credential = bearer(scope)
    return hash_token(credential) if credential.startswith(NODE_PREFIX) else None


async def read_credentials() -> None:
    """Read every node's credential hash into this process's index (at startup, and while
    joins are refused)."""
    credentials.loading = True
    try:
        ids = await database_sync_to_async(
            node_ids_by_credential, thread_sensitive=False, executor=_credential_reader
        )()
        credentials.replace(ids)
    except Exception as exc:  # PostgreSQL down: knocks are not heartbeats meanwhile
        log.warning("could not read the nodes' credentials: %s", exc)
    finally:
        credentials.loading = False


class AgentGate:
    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        digest = credential_digest(scope)
        if digest is None:  # no node credential at all: refused here, taking no slot
            log.warning("refused an agent connection from %s: no node credential", scope.get("client"))
            await receive()  # websocket.connect
            await send({"type": "websocket.close"})  # before accept: answered 403
            return
        if (known := credentials.lookup(digest)) is not None:
            # Its agent is alive, whether it joins now or waits its turn: a heartbeat, before
            # any work that could make it wait.
            await heartbeats.record(known, time.time(), knock=True)
        slot = gate().enter()
        if slot is None:
            await self._refuse(scope, receive, send)
            return
        try:
            await self.app({**scope, SLOT: slot, DIGEST: digest}, receive, send)
        finally:
            gate().leave(slot)  # the consumer gives it back when its join ends; at the latest here

    @staticmethod
    async def _refuse(scope, receive, send):
        """Too many agents are joining this process: come back in a moment. The credentials
        are read again meanwhile, so that the next knock of each node is its heartbeat."""
        if credentials.wants_reload():
            credentials.loading = True
            _reading.add(task := asyncio.get_running_loop().create_task(read_credentials()))
            task.add_done_callback(_reading.discard)  # kept referenced until it ends
        await receive()  # websocket.connect
        wait = retry_after(settings.NODE_GRACE_SECONDS)
        if DENIAL in scope.get("extensions", {}):
            _answered_with_http.set(True)
            headers = [(b"retry-after", str(wait).encode()), (b"content-type", b"text/plain; charset=utf-8")]
            await send({"type": "websocket.http.response.start", "status": 503, "headers": headers})
            body = f"too many agents are joining this web process; try again in {wait} s\n".encode()
            await send({"type": "websocket.http.response.body", "body": body})
        else:  # a server without the extension: accept, then close with "try again later"
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": TRY_AGAIN_LATER})
