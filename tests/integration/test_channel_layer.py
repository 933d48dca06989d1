"""The channel layer takes a process's messages out of Redis in batches (config/channel_layer.py),
against the test Redis."""

import asyncio

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings

from config.channel_layer import RECEIVE_BATCH, BatchedRedisChannelLayer


def layer() -> BatchedRedisChannelLayer:
    return BatchedRedisChannelLayer(**settings.CHANNEL_LAYERS["default"]["CONFIG"])


def pops() -> int:
    """ZPOPMIN and BZPOPMIN calls Redis has served so far."""
    stats = redis.Redis.from_url(settings.REDIS_URL).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("zpopmin", "bzpopmin"))


def test_a_burst_to_many_consumers_of_a_process_is_taken_in_a_few_round_trips():
    count = 3 * RECEIVE_BATCH + 7
    before = pops()

    async def scenario():
        channel_layer = layer()
        channels = [await channel_layer.new_channel() for _ in range(count)]
        for index, channel in enumerate(channels):
            await channel_layer.send(channel, {"type": "x", "index": index})
        got = await asyncio.gather(*(asyncio.wait_for(channel_layer.receive(c), 10) for c in channels))
        await channel_layer.close_pools()
        return [message["index"] for message in got]

    assert async_to_sync(scenario)() == list(range(count))
    # channels_redis's own layer pops one message per round trip (and four round trips each)
    assert pops() - before <= count // RECEIVE_BATCH + 3


def test_a_receiver_cancelled_while_waiting_loses_nothing_the_next_one_gets_it():
    async def scenario():
        channel_layer = layer()
        first, second = await channel_layer.new_channel(), await channel_layer.new_channel()
        waiting = asyncio.ensure_future(channel_layer.receive(first))
        await asyncio.sleep(0)  # it starts waiting in Redis (the fault: it is then cancelled)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await channel_layer.send(second, {"type": "x", "n": 1})
        await channel_layer.send(first, {"type": "x", "n": 2})
        got = [await asyncio.wait_for(channel_layer.receive(c), 10) for c in (second, first)]
        await channel_layer.close_pools()
        return [m["n"] for m in got]

    assert async_to_sync(scenario)() == [1, 2]


def test_a_named_channel_is_received_as_channels_redis_does():
    async def scenario():
        channel_layer = layer()
        await channel_layer.send("berth-test-named", {"type": "x", "n": 3})
        message = await asyncio.wait_for(channel_layer.receive("berth-test-named"), 10)
        await channel_layer.close_pools()
        return message

    assert async_to_sync(scenario)() == {"type": "x", "n": 3}
