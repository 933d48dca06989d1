"""The channel layer: channels_redis's, receiving a web process's messages in batches.

channels_redis keeps one inbox (a Redis sorted set) per process for all its consumers and
takes one message at a time out of it: a Lua script, BZPOPMIN, ZADD to a backup set, then
ZPOPMIN from the backup, four round trips in a row per message, the next one waiting for
the last. That backup protects a message from the cancellation of the coroutine that
popped it. At 100,000 replicas on 5,000 hollow nodes each web process's inbox held about
6,000 desired frames waiting (agents lagged their generation for minutes), while Redis
itself was nearly idle.

Here a process takes up to RECEIVE_BATCH messages in one ZPOPMIN (or waits for one with
BZPOPMIN when there are none) and keeps what it popped in memory, on the layer, so a
cancelled receiver loses nothing: the next receive takes the rest first. What a process has
popped is only ever for that process's own consumers, so keeping it in its memory instead
of a backup set in Redis loses nothing the backup would have saved.

Receiving, each process-local channel (one per consumer: thousands of agents in a web
process) waits on a queue of its own, which one pump task per event loop fills from the
inbox. channels_redis has every waiting consumer race for a shared lock instead: each
receive creates two tasks and an `asyncio.wait`, and each message cancels a waiter the
lock keeps in a list, which costs a scan of all of them. With 2,500 agents in a process
that made each message 45 % dearer than with 100 (benchmarks/channel_receive.py).

`group_send_many` sends many groups their own message at once (a dispatch of desired sets
to thousands of nodes): channels_redis's `group_send` costs four round trips per group,
one after another; here all groups' members are read in one pipelined round trip and all
messages added in one script call per few hundred, with the same capacity and expiry
rules as channels_redis's group_send.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

import redis.asyncio as aioredis
from channels_redis.core import RedisChannelLayer

RECEIVE_BATCH = 100
# Messages added per script call: a call blocks Redis while it runs, so it stays short.
SEND_CHUNK = 500
# A call finding every connection of the pool in use waits this long for one, then fails.
POOL_WAIT = 10.0

log = logging.getLogger(__name__)

# KEYS: the channels' inboxes. ARGV: now, expiry, each inbox's capacity, then (inbox index,
# message) pairs. Drops messages expired from each inbox, adds each message unless its inbox
# is at capacity (as channels_redis does, silently but counted), returns how many were dropped.
_SEND_MANY = """
local now, expiry = tonumber(ARGV[1]), tonumber(ARGV[2])
local room = {}
for i = 1, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], 0, math.floor(now) - expiry)
    room[i] = tonumber(ARGV[2 + i]) - redis.call('ZCARD', KEYS[i])
end
local dropped = 0
for j = 3 + #KEYS, #ARGV, 2 do
    local k = tonumber(ARGV[j])
    if room[k] > 0 then
        redis.call('ZADD', KEYS[k], now, ARGV[j + 1])
        room[k] = room[k] - 1
    else
        dropped = dropped + 1
    end
end
for i = 1, #KEYS do
    redis.call('EXPIRE', KEYS[i], expiry)
end
return dropped
"""


class ReceiveFailed:
    """Stands in a receiver's queue for the error it is to raise: handed to each receiver
    when the pump gave up (Redis kept failing); the agents' consumer uses it likewise
    between its pumps and its loop (web/consumers/agent.py)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Inbox:
    """A process's local channels in one event loop: their queues, who waits on them, the pump."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue] = {}
        self.receivers: collections.Counter[str] = collections.Counter()
        # Channels with messages but nobody receiving, since when: a consumer between two
        # receives picks them up at once; those of consumers gone are dropped after expiry.
        self.unclaimed: dict[str, float] = {}
        self.pump: asyncio.Task | None = None


def _now() -> float:
    return time.monotonic()


# A failed fetch is tried once more after this pause before the receivers are failed (a
# brief Redis hiccup must not end every agent session of the process at once).
FETCH_RETRY_SECONDS = 0.5


class BatchedRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._popped: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._fetching: dict[str, asyncio.Future] = {}
        # One per event loop receiving; removed when its pump ends with nobody receiving.
        self._inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}

    def create_pool(self, index):
        # channels_redis's pool raises "Too many connections" once `max_connections` calls are
        # in flight: thousands of agents leaving at once (a network blip) then failed to
        # clean up their sessions. This one makes a call wait for a free connection instead
        # (at most POOL_WAIT seconds; then it fails as before).
        host = dict(self.hosts[index])
        if "address" not in host:
            return super().create_pool(index)
        return aioredis.BlockingConnectionPool.from_url(host.pop("address"), timeout=POOL_WAIT, **host)

    async def receive(self, channel):
        if "!" not in channel:  # a named channel shared between processes: as channels_redis
            return await super().receive(channel)
        assert self.require_valid_channel_name(channel), "Channel name invalid"
        real_channel = self.non_local_name(channel)
        assert real_channel.endswith(self.client_prefix + "!"), "Wrong client prefix"
        loop = asyncio.get_running_loop()
        inbox = self._inboxes.get(loop)
        if inbox is None:
            if any(other.receivers for other in self._inboxes.values()):
                # Two pumps would take each other's messages out of the one inbox.
                raise RuntimeError("Two event loops are trying to receive() on one channel layer at once!")
            inbox = self._inboxes[loop] = _Inbox()
        queue = inbox.queues.get(channel)
        if queue is None:
            queue = inbox.queues[channel] = asyncio.Queue()
        inbox.unclaimed.pop(channel, None)
        inbox.receivers[channel] += 1
        if inbox.pump is None or inbox.pump.done():
            inbox.pump = loop.create_task(self._pump(real_channel, inbox, loop), name="berth-channel-pump")
        try:
            item = await queue.get()
        finally:
            inbox.receivers[channel] -= 1
            if not inbox.receivers[channel]:
                del inbox.receivers[channel]
                if inbox.queues.get(channel) is queue:
                    if queue.empty():
                        del inbox.queues[channel]  # made again by the next receive or message
                    else:  # more waiting: its consumer takes them next, unless it is gone
                        inbox.unclaimed[channel] = _now()
        if isinstance(item, ReceiveFailed):
            raise item.error
        return item

    async def _pump(self, real_channel: str, inbox: _Inbox, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the process's messages to their channels' queues while anyone receives."""
        key = self.prefix + real_channel
        popped = self._popped[key]
        failed = False
        try:
            while inbox.receivers:
                if not popped:
                    try:
                        await self._fetch_shielded(real_channel, key, popped)
                        failed = False
                    except Exception as exc:
                        if failed:  # again: as with channels_redis, the receivers see the
                            self._fail(inbox, exc)  # error (their agents reconnect)
                            return
                        failed = True
                        log.warning("receiving failed (%s); trying again in %g s", exc, FETCH_RETRY_SECONDS)
                        await asyncio.sleep(FETCH_RETRY_SECONDS)
                    continue
                self._deliver(inbox, popped.popleft())
        finally:
            # Nobody receives: the inbox goes, unless messages still wait for a consumer
            # between two receives (its next receive starts another pump).
            self._drop_unclaimed(inbox, _now())
            if self._inboxes.get(loop) is inbox and not inbox.receivers and not inbox.queues:
                del self._inboxes[loop]

    async def _fetch_shielded(self, real_channel: str, key: str, popped: collections.deque) -> None:
        fetch = self._fetching.get(key)
        if fetch is None or fetch.done() or fetch.get_loop() is not asyncio.get_running_loop():
            fetch = self._fetching[key] = asyncio.ensure_future(self._fetch(real_channel, key, popped))
        # Shielded: if the pump is cancelled, the fetch still puts what it popped into the
        # buffer, for the next pump.
        await asyncio.shield(fetch)

    def _deliver(self, inbox: _Inbox, raw: bytes) -> None:
        try:
            message = self.deserialize(raw)
        except Exception:
            log.exception("dropped a channel-layer message that could not be decoded")
            return
        channel = message.pop("__asgi_channel__", None)
        now = _now()
        for name in channel if isinstance(channel, list) else [channel]:
            queue = inbox.queues.get(name)
            if queue is None:
                queue = inbox.queues[name] = asyncio.Queue()
                inbox.unclaimed[name] = now
            if queue.qsize() >= self.capacity:  # as channels_redis's buffer: the oldest goes
                queue.get_nowait()
            queue.put_nowait(message)
        self._drop_unclaimed(inbox, now)

    @staticmethod
    def _fail(inbox: _Inbox, error: BaseException) -> None:
        for name, count in inbox.receivers.items():
            for _ in range(count):
                inbox.queues[name].put_nowait(ReceiveFailed(error))

    def _drop_unclaimed(self, inbox: _Inbox, now: float) -> None:
        while inbox.unclaimed:
            name, since = next(iter(inbox.unclaimed.items()))  # oldest first
            if now - since < self.expiry:
                return
            del inbox.unclaimed[name]
            inbox.queues.pop(name, None)

    async def flush(self):
        for inbox in self._inboxes.values():
            if inbox.pump is not None:
                inbox.pump.cancel()
        self._inboxes.clear()
        self._popped.clear()
        await super().flush()

    async def _fetch(self, channel: str, key: str, popped: collections.deque) -> None:
        connection = self.connection(self.consistent_hash(channel))
        batch = await connection.zpopmin(key, RECEIVE_BATCH)
        if batch:
            popped.extend(member for member, _ in batch)
            return
        result = await connection.bzpopmin(key, timeout=self.brpop_timeout)
        if result is not None:
            popped.append(result[1])

    async def group_send_many(self, messages: list[tuple[str, dict]]) -> None:
        """Send each (group, message) pair: every channel in the group gets the message."""
        by_connection: dict[int, list[tuple[str, dict]]] = collections.defaultdict(list)
        for group, message in messages:
            assert self.require_valid_group_name(group), "Group name not valid"
            by_connection[self.consistent_hash(group)].append((group, message))
        # Each group's members, from the connection holding the group.
        members: list[tuple[dict, list[bytes]]] = []
        for index, pairs in by_connection.items():
            expired = int(time.time()) - self.group_expiry
            async with self.connection(index).pipeline(transaction=False) as pipe:
                for group, _ in pairs:
                    key = self._group_key(group)
                    pipe.zremrangebyscore(key, min=0, max=expired)
                    pipe.zrange(key, 0, -1)
                replies = await pipe.execute()
            members.extend(
                (message, channels) for (_, message), channels in zip(pairs, replies[1::2], strict=True)
            )
        # Each message once per inbox its group's channels read (as channels_redis does, with
        # the channels it is for), on the connection holding the inbox.
        inboxes: dict[int, list[tuple[str, bytes]]] = collections.defaultdict(list)
        sent = 0
        for message, channels in members:
            by_key: dict[str, list[str]] = {}
            for member in channels:
                channel = member.decode()
                local = self.non_local_name(channel) if "!" in channel else channel
                by_key.setdefault(local, []).append(channel)
            for local, names in by_key.items():
                payload = self.serialize({**message, "__asgi_channel__": names})
                inboxes[self.consistent_hash(local)].append((self.prefix + local, payload))
                sent += 1
        dropped = 0
        for index, items in inboxes.items():
            for start in range(0, len(items), SEND_CHUNK):
                dropped += await self._add_many(index, items[start : start + SEND_CHUNK])
        if dropped:
            log.warning("%d of %d message(s) dropped: their process's inbox is at capacity", dropped, sent)

    async def _add_many(self, index: int, items: list[tuple[str, bytes]]) -> int:
        keys: list[str] = []
        position: dict[str, int] = {}
        pairs: list = []
        for key, payload in items:
            if key not in position:
                position[key] = len(keys) + 1  # Lua counts from 1
                keys.append(key)
            pairs += [position[key], payload]
        capacities = [self.get_capacity(key.removeprefix(self.prefix)) for key in keys]
        args = [time.time(), self.expiry, *capacities, *pairs]
        return await self.connection(index).eval(_SEND_MANY, len(keys), *keys, *args)
