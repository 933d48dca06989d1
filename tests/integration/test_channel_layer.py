"""The channel layer takes a process's messages out of Redis in batches (config/channel_layer.py),
against the test Redis."""

import asyncio

import pytest
import redis
from asgiref.sync import async_to_sync
from django.conf import settings

from config.channel_layer import RECEIVE_BATCH, SEND_CHUNK, BatchedRedisChannelLayer


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


def commands(*names) -> int:
    stats = redis.Redis.from_url(settings.REDIS_URL).info("commandstats")
    return sum(stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in names)


def test_group_send_many_gives_each_member_its_groups_message_in_a_few_round_trips():
    count = 1200  # more than SEND_CHUNK: the adds go in several script calls

    async def scenario():
        sender, receiver, other = layer(), layer(), layer()  # three processes
        channels = [await receiver.new_channel() for _ in range(count)]
        for index, channel in enumerate(channels):
            await receiver.group_add(f"g{index}", channel)
        elsewhere = await other.new_channel()
        await other.group_add("g0", elsewhere)  # a group with members in two processes
        await receiver.group_add("g1", channels[2])  # and one with two members in one
        before = commands("eval", "evalsha", "zrange")
        await sender.group_send_many(
            [(f"g{index}", {"type": "x", "n": index}) for index in range(count)]
            + [("nobody", {"type": "x", "n": -1})]
        )
        used = commands("eval", "evalsha", "zrange") - before
        got = await asyncio.gather(*(asyncio.wait_for(receiver.receive(c), 10) for c in channels))
        extra = await asyncio.wait_for(receiver.receive(channels[2]), 10)
        far = await asyncio.wait_for(other.receive(elsewhere), 10)
        for each in (sender, receiver, other):
            await each.close_pools()
        return [m["n"] for m in got], extra["n"], far["n"], used

    got, extra, far, used = async_to_sync(scenario)()
    # channels[2] is in g1 and g2: it gets both (messages added in one call share a score,
    # so which comes first is not defined); the other process's channel gets g0's
    assert sorted([got[2], extra]) == [1, 2]
    got[2] = 2
    assert got == list(range(count))
    assert far == 0
    # one ZRANGE per group (pipelined into one round trip), and one script call per chunk
    # per inbox: channels_redis's group_send makes an EVAL per group
    assert used <= count + 1 + (count // SEND_CHUNK + 1) + 1


def test_group_send_many_drops_past_an_inbox_capacity_as_channels_redis_does(caplog):
    async def scenario():
        small = BatchedRedisChannelLayer(**{**settings.CHANNEL_LAYERS["default"]["CONFIG"], "capacity": 3})
        channels = [await small.new_channel() for _ in range(5)]
        for index, channel in enumerate(channels):
            await small.group_add(f"cap{index}", channel)
        await small.group_send_many([(f"cap{index}", {"type": "x", "n": index}) for index in range(5)])
        local = small.non_local_name(channels[0])
        held = await small.connection(small.consistent_hash(local)).zcard(small.prefix + local)
        got = [await asyncio.wait_for(small.receive(c), 10) for c in channels[:3]]
        await small.close_pools()
        return [m["n"] for m in got], held

    got, held = async_to_sync(scenario)()
    assert held == 3  # the process's one inbox took three, the other two were dropped
    assert got == [0, 1, 2]
    assert "2 of 5 message(s) dropped" in caplog.text


def test_waiting_receivers_share_one_pump_and_each_gets_its_own_messages():
    """A consumer waiting costs no task of its own in the layer (channels_redis makes two
    per wait, and a scan of every waiter per message): one pump per loop hands out."""
    count = 300

    async def scenario():
        channel_layer = layer()
        channels = [await channel_layer.new_channel() for _ in range(count)]
        before = len(asyncio.all_tasks())
        waiting = [asyncio.ensure_future(channel_layer.receive(c)) for c in channels]
        await asyncio.sleep(0)  # each has started waiting
        layer_tasks = len(asyncio.all_tasks()) - before - count
        for index in reversed(range(count)):
            await channel_layer.send(channels[index], {"type": "x", "n": index})
        got = await asyncio.wait_for(asyncio.gather(*waiting), 10)
        await channel_layer.close_pools()
        return layer_tasks, [m["n"] for m in got]

    layer_tasks, got = async_to_sync(scenario)()
    assert layer_tasks <= 2  # the pump (and its fetch), not one or two per receiver
    assert got == list(range(count))


def test_messages_for_a_consumer_that_is_gone_are_dropped_after_the_expiry(monkeypatch):
    import config.channel_layer as module

    clock = [1000.0]
    monkeypatch.setattr(module, "_now", lambda: clock[0])

    async def scenario():
        channel_layer = layer()
        inbox_of = lambda: channel_layer._inboxes[asyncio.get_running_loop()]  # noqa: E731
        live, gone = await channel_layer.new_channel(), await channel_layer.new_channel()
        await channel_layer.send(gone, {"type": "x", "n": 0})
        await channel_layer.send(live, {"type": "x", "n": 1})
        first = await asyncio.wait_for(channel_layer.receive(live), 10)
        kept = gone in inbox_of().queues  # nobody received it yet: kept for a consumer between receives
        clock[0] += channel_layer.expiry + 1
        await channel_layer.send(live, {"type": "x", "n": 2})
        second = await asyncio.wait_for(channel_layer.receive(live), 10)
        dropped = gone not in inbox_of().queues
        await channel_layer.close_pools()
        return [first["n"], second["n"]], kept, dropped

    got, kept, dropped = async_to_sync(scenario)()
    assert got == [1, 2] and kept and dropped


def test_a_receive_cancelled_after_its_message_arrived_leaves_it_to_the_next():
    async def scenario():
        channel_layer = layer()
        channel = await channel_layer.new_channel()
        waiting = asyncio.ensure_future(channel_layer.receive(channel))
        await asyncio.sleep(0)
        inbox = channel_layer._inboxes[asyncio.get_running_loop()]
        inbox.queues[channel].put_nowait({"type": "x", "n": 1})  # as the pump delivers it
        waiting.cancel()  # before the receiver ran again
        with pytest.raises(asyncio.CancelledError):
            await waiting
        message = await asyncio.wait_for(channel_layer.receive(channel), 10)
        await channel_layer.close_pools()
        return message

    assert async_to_sync(scenario)() == {"type": "x", "n": 1}


def failing_fetches(channel_layer, monkeypatch, failures: int):
    """The layer's fetches fail `failures` times (Redis went away), then work again."""
    real = channel_layer._fetch
    left = [failures]

    async def fetch(*args):
        if left[0]:
            left[0] -= 1
            raise redis.exceptions.ConnectionError("Redis went away")
        return await real(*args)

    monkeypatch.setattr(channel_layer, "_fetch", fetch)


def test_a_redis_error_that_persists_reaches_every_waiting_receiver(monkeypatch):
    """As with channels_redis, a consumer sees its layer fail (its agent reconnects)."""

    async def scenario():
        channel_layer = layer()
        channels = [await channel_layer.new_channel() for _ in range(2)]
        failing_fetches(channel_layer, monkeypatch, failures=2)
        receivers = [channels[0], channels[0], channels[1]]  # two receivers on one channel
        results = await asyncio.wait_for(
            asyncio.gather(*(channel_layer.receive(c) for c in receivers), return_exceptions=True), 10
        )
        await channel_layer.close_pools()
        return results

    results = async_to_sync(scenario)()
    assert [type(r) for r in results] == [redis.exceptions.ConnectionError] * 3


def test_one_failed_fetch_is_tried_again_and_a_message_that_cannot_be_decoded_is_dropped(monkeypatch, caplog):
    async def scenario():
        channel_layer = layer()
        channel = await channel_layer.new_channel()
        failing_fetches(channel_layer, monkeypatch, failures=1)
        key = channel_layer.prefix + channel_layer.non_local_name(channel)
        channel_layer._popped[key].append(b"not msgpack \xc1")
        await channel_layer.send(channel, {"type": "x", "n": 1})
        message = await asyncio.wait_for(channel_layer.receive(channel), 10)
        await channel_layer.close_pools()
        return message

    assert async_to_sync(scenario)() == {"type": "x", "n": 1}
    assert "could not be decoded" in caplog.text


def test_a_burst_of_more_calls_than_connections_waits_for_a_free_one():
    # Thousands of agents leaving at once (a web process's network blips) each discard their
    # group: with more calls in flight than the pool has connections, channels_redis's pool
    # raised "Too many connections" and the sessions were not cleaned up.
    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"])
    config["hosts"] = [{**config["hosts"][0], "max_connections": 4}]

    async def scenario():
        channel_layer = BatchedRedisChannelLayer(**config)
        names = [f"test-burst-{n}" for n in range(60)]
        channel = await channel_layer.new_channel()
        await asyncio.gather(*(channel_layer.group_add(name, channel) for name in names))
        await asyncio.gather(*(channel_layer.group_discard(name, channel) for name in names))
        pool = channel_layer.connection(0).connection_pool
        await channel_layer.flush()
        return pool.max_connections

    assert async_to_sync(scenario)() == 4
