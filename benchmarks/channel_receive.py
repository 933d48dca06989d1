"""Delivering channel-layer messages to a web process's consumers: the cost per message as
the number of consumers waiting in that process grows.

Each agent connection is a consumer waiting on `channel_layer.receive` for its node's
desired sets. This starts a private Redis, makes N consumers wait in one event loop (as
in one web process), sends M messages to random ones of them (as a dispatch to M nodes
does, through `group_send_many`), and times until every message has been received.

Prints one JSON object: per consumer count, `us_per_message` for Berth's layer
(config/channel_layer.py) and, in the same run, for channels_redis's stock layer (the
reference).

    .venv/bin/python benchmarks/channel_receive.py [--consumers 100,1000,5000] [--messages 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def log(message: str) -> None:
    print(f"[channel_receive] {message}", file=sys.stderr, flush=True)


async def measure(layer_class, redis_url: str, consumers: int, messages: int, seed: int) -> float:
    """Microseconds per message, from the first send until the last message is received."""
    from django.conf import settings

    config = dict(settings.CHANNEL_LAYERS["default"]["CONFIG"])  # as deployed, on this Redis
    config["hosts"] = [{**config["hosts"][0], "address": redis_url}]
    layer = layer_class(**config)
    channels = [await layer.new_channel() for _ in range(consumers)]
    for i, channel in enumerate(channels):
        await layer.group_add(f"node.{i}", channel)
    received = 0
    all_in = asyncio.Event()

    async def consumer(channel: str) -> None:
        nonlocal received
        while True:
            await layer.receive(channel)
            received += 1
            if received == messages:
                all_in.set()

    tasks = [asyncio.create_task(consumer(channel)) for channel in channels]
    await asyncio.sleep(0.2)  # every consumer is waiting (a measurement's start, not a condition)
    rng = random.Random(seed)
    targets = [rng.randrange(consumers) for _ in range(messages)]
    started = time.perf_counter()
    batch = 200  # a dispatch flush: a few hundred nodes at a time
    for start in range(0, messages, batch):
        chunk = targets[start : start + batch]
        pairs = [(f"node.{i}", {"type": "desired.push", "n": n}) for n, i in enumerate(chunk)]
        if hasattr(layer, "group_send_many"):
            await layer.group_send_many(pairs)
        else:
            await asyncio.gather(*(layer.group_send(group, message) for group, message in pairs))
    await asyncio.wait_for(all_in.wait(), 120)
    elapsed = time.perf_counter() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await layer.flush()
    return 1e6 * elapsed / messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--consumers", default="100,1000,5000", help="consumer counts, comma-separated")
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    import django

    django.setup()
    from channels_redis.core import RedisChannelLayer

    from config.channel_layer import BatchedRedisChannelLayer
    from tests.harness.plugin import start_services

    services = start_services()
    try:
        url = services.redis.url(0)
        result: dict = {"messages": args.messages, "us_per_message": {}, "stock_us_per_message": {}}
        for consumers in (int(c) for c in args.consumers.split(",")):
            log(f"{consumers} consumers")
            result["us_per_message"][consumers] = round(
                asyncio.run(measure(BatchedRedisChannelLayer, url, consumers, args.messages, args.seed)), 1
            )
            result["stock_us_per_message"][consumers] = round(
                asyncio.run(measure(RedisChannelLayer, url, consumers, args.messages, args.seed)), 1
            )
    finally:
        services.stop()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
