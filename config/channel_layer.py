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
"""

from __future__ import annotations

import asyncio
import collections

from channels_redis.core import RedisChannelLayer

RECEIVE_BATCH = 100


class BatchedRedisChannelLayer(RedisChannelLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._popped: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._fetching: dict[str, asyncio.Future] = {}

    async def receive_single(self, channel):
        if "!" not in channel:  # a named channel shared between processes: as channels_redis
            return await super().receive_single(channel)
        assert self.require_valid_channel_name(channel, receive=True), "Channel name invalid"
        assert channel.endswith("!")
        key = self.prefix + channel
        popped = self._popped[key]
        while not popped:
            fetch = self._fetching.get(key)
            if fetch is None or fetch.done() or fetch.get_loop() is not asyncio.get_running_loop():
                fetch = self._fetching[key] = asyncio.ensure_future(self._fetch(channel, key, popped))
            # Shielded: if this receiver is cancelled, the fetch still puts what it popped
            # into the buffer, for the next one.
            await asyncio.shield(fetch)
        message = self.deserialize(popped.popleft())
        if "__asgi_channel__" in message:
            channel = message.pop("__asgi_channel__")
        return channel, message

    async def _fetch(self, channel: str, key: str, popped: collections.deque) -> None:
        connection = self.connection(self.consistent_hash(channel))
        batch = await connection.zpopmin(key, RECEIVE_BATCH)
        if batch:
            popped.extend(member for member, _ in batch)
            return
        result = await connection.bzpopmin(key, timeout=self.brpop_timeout)
        if result is not None:
            popped.append(result[1])
