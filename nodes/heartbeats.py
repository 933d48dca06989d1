"""Agent heartbeats live in Redis, not PostgreSQL: thousands of nodes beating every
second or two would otherwise be thousands of row updates a second. The node monitor
reads them in one call and writes PostgreSQL only on a change of status (and a coarse
`last_heartbeat` for people)."""

import redis
import redis.asyncio as aioredis
from django.conf import settings

KEY = "berth:heartbeats"

_sync_client = None
_async_clients: dict = {}


def _client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _sync_client


async def record(node_id: int, timestamp: float) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    await client.hset(KEY, str(node_id), repr(timestamp))


def read_all() -> dict[int, float]:
    """Every node's last heartbeat as a Unix time; empty if Redis lost them (it restarts)."""
    return {int(k): float(v) for k, v in _client().hgetall(KEY).items()}


def forget(node_id: int) -> None:
    _client().hdel(KEY, str(node_id))
