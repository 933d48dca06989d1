"""The last 15 minutes of metrics, in Redis: one capped list per node and per replica.

Why Redis and not PostgreSQL: a sample every 5 s from every node and every replica is
write-heavy, short-lived data nobody needs after a quarter of an hour; a capped list
(LPUSH + LTRIM, with an expiry so a vanished replica's list goes by itself) costs one
pipelined round trip per agent frame and never grows, and losing it on a Redis restart
only empties the charts for a while. Series are computed from the raw counters when
read (web/metrics_series.py).
"""

from __future__ import annotations

import json

import redis
import redis.asyncio as aioredis
from channels.layers import get_channel_layer
from django.conf import settings

WINDOW_SECONDS = 15 * 60
MAX_SAMPLES = 200  # 15 min at the agent's 5 s, with slack for a faster agent
_clients: dict = {}
_sync_client = None


def node_key(node_id: int) -> str:
    return f"berth:metrics:node:{node_id}"


def replica_key(namespace: str, replica: str) -> str:
    return f"berth:metrics:replica:{namespace}/{replica}"


def metrics_group(node_id: int) -> str:
    return f"metrics.node.{node_id}"


def _number(value, default=None):
    return value if isinstance(value, int | float) and not isinstance(value, bool) else default


def compact(time: float, entry: dict) -> str:
    return json.dumps(
        {
            "t": time,
            "cpu": _number(entry.get("cpu_percent")),
            "mem": _number(entry.get("memory_bytes"), 0),
            "lim": _number(entry.get("memory_limit", entry.get("memory_total")), 0),
            "rx": _number(entry.get("net_rx_bytes"), 0),
            "tx": _number(entry.get("net_tx_bytes"), 0),
            "rd": _number(entry.get("block_read_bytes"), 0),
            "wr": _number(entry.get("block_write_bytes"), 0),
        },
        separators=(",", ":"),
    )


def _async_client():
    import asyncio

    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return client


async def record(node_id: int, frame: dict) -> None:
    """Store one agent `metrics` frame and tell the node's metrics viewers."""
    time = _number(frame.get("time"))
    node = frame.get("node")
    if time is None or not isinstance(node, dict):
        return
    pipe = _async_client().pipeline(transaction=False)
    keys = [(node_key(node_id), node)]
    replicas = []
    for entry in frame.get("containers") or ():
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("namespace"), str)
            and isinstance(entry.get("replica"), str)
        ):
            keys.append((replica_key(entry["namespace"], entry["replica"]), entry))
            replicas.append(f"{entry['namespace']}/{entry['replica']}")
    for key, entry in keys:
        pipe.lpush(key, compact(time, entry))
        pipe.ltrim(key, 0, MAX_SAMPLES - 1)
        pipe.expire(key, WINDOW_SECONDS + 60)
    await pipe.execute()
    await get_channel_layer().group_send(
        metrics_group(node_id),
        {"type": "metrics.sampled", "node_id": node_id, "time": time, "replicas": replicas},
    )


def _decode(raw: list) -> list[dict]:
    """Oldest first."""
    return [json.loads(item) for item in reversed(raw)]


def read(keys: list[str]) -> dict[str, list[dict]]:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    pipe = _sync_client.pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, MAX_SAMPLES - 1)
    return {key: _decode(raw) for key, raw in zip(keys, pipe.execute(), strict=True)}


async def read_async(keys: list[str], count: int = MAX_SAMPLES) -> dict[str, list[dict]]:
    pipe = _async_client().pipeline(transaction=False)
    for key in keys:
        pipe.lrange(key, 0, count - 1)
    return {key: _decode(raw) for key, raw in zip(keys, await pipe.execute(), strict=True)}
