"""How many agents a web process lets join at once, and how it knows a refused one: the
decisions, kept apart from the ASGI middleware that applies them (web/consumers/agent_gate.py).

Joining (the handshake, the credential checked, the hello recorded, the full desired set
read and sent) is the dearest thing an agent asks of the control plane. After a web server
restart every agent of the fleet asks at once. Queued without bound, the joins waited
longer than the agents' 10 s handshake timeout: the agents gave up and knocked again while
the server still did the work of their abandoned attempts, and at 2,000 hollow nodes fewer
than a tenth had joined after a minute. So each web process admits at most
AGENT_JOINS_IN_FLIGHT joins at a time and answers the others at once with HTTP 503 and a
Retry-After, as Kubernetes' API server answers 429 past its max in-flight requests; the
agent comes back after about that long (agent/session.py).

An agent's knock is also its heartbeat, as Kubernetes gives node heartbeats a priority
level of their own: a node waiting its turn (refused, or admitted and waiting for the
database) is not a node gone silent. Knowing which node knocked must not cost the database
that joins are waiting for, so a process keeps its nodes' credential hashes
(CredentialIndex), read in one query every RELOAD_SECONDS while it refuses joins.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# A join holds its slot until its full set is sent, or at most this long (an agent that
# connects and never says hello must not keep a slot).
JOIN_SLOT_SECONDS = 15.0
RELOAD_SECONDS = 5.0


class JoinGate:
    """At most `limit` joins at a time; a slot is given back by `leave` or expires."""

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._slots: dict[object, float] = {}  # slot -> when it was taken

    def enter(self) -> object | None:
        """A slot, or None when `limit` joins are under way."""
        now = self._clock()
        if len(self._slots) >= self.limit:
            for slot, since in list(self._slots.items()):
                if now - since > JOIN_SLOT_SECONDS:
                    del self._slots[slot]
            if len(self._slots) >= self.limit:
                return None
        slot = object()
        self._slots[slot] = now
        return slot

    def leave(self, slot: object | None) -> None:
        if slot is not None:
            self._slots.pop(slot, None)

    @property
    def in_flight(self) -> int:
        return len(self._slots)


def retry_after(grace: float) -> int:
    """Seconds a refused agent is told to wait: its knocks (its heartbeats meanwhile) come at
    most 1.5 times that apart with the agent's jitter, well within the node grace."""
    return max(1, min(5, int(grace / 3)))


class CredentialIndex:
    """Node ids by credential hash, as of the last reload (and the joins since). While joins
    are refused it is reloaded every RELOAD_SECONDS; a reload replaces everything, so a
    rotated or removed credential is forgotten by the next one, and one the database refuses
    is forgotten at once (a stale entry gives at most one heartbeat, never a session)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._ids: dict[str, int] = {}
        self._loaded_at = float("-inf")
        self.loading = False

    def lookup(self, digest: str) -> int | None:
        return self._ids.get(digest)

    def remember(self, digest: str, node_id: int) -> None:
        self._ids[digest] = node_id

    def forget(self, digest: str) -> None:
        self._ids.pop(digest, None)

    def wants_reload(self) -> bool:
        return not self.loading and self._clock() - self._loaded_at >= RELOAD_SECONDS

    def replace(self, ids: dict[str, int]) -> None:
        self._ids = dict(ids)
        self._loaded_at = self._clock()
