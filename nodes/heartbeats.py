"""Agent heartbeats live in Redis, not PostgreSQL: thousands of nodes beating every
second or two would otherwise be thousands of row updates a second. The node monitor
reads them in one call and writes PostgreSQL only on a change of status (and a coarse
`last_heartbeat` for people)."""

import logging
import math

import redis
import redis.asyncio as aioredis
from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

KEY = "berth:heartbeats"
EPOCH_KEY = "berth:heartbeats:since"
# Set if missing at every flush: finding it missing means Redis lost its data (restarted
# empty or flushed), and with it the channel layer's groups.
PRESENCE_KEY = "berth:redis-present"

log = logging.getLogger(__name__)

_sync_client = None
_async_clients: dict = {}


def _client() -> redis.Redis:
    global _sync_client
    if _sync_client is None:
        _sync_client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    return _sync_client


# Heartbeats wait here and go to Redis in one HSET per flush: thousands of agents beating
# every couple of seconds cost a handful of Redis calls a second per web process, not
# thousands. The delay (FLUSH_SECONDS) is tiny next to the node grace (seconds).
FLUSH_SECONDS = 0.25
_pending: dict = {}  # event loop -> {node_id: timestamp}
_flushers: dict = {}  # event loop -> the task flushing that loop's heartbeats
_data_epoch = 0  # how many times this process found Redis without its data
_fleet_size = 0  # nodes with a heartbeat on record, as of this process's last flush

# At least this many heartbeats fit in a node's grace, however large the fleet: a lost or
# late beat never makes a healthy node NotReady.
BEATS_PER_GRACE = 3


def interval_for(fleet_size: int, *, base: float, grace: float, max_per_second: float) -> float:
    """How often each agent of a fleet of `fleet_size` nodes should heartbeat.

    `base` for a fleet small enough that all of it beats at most `max_per_second` times a
    second; a larger fleet beats proportionally less often, until BEATS_PER_GRACE beats
    just fit in the grace (then the rate is allowed to grow). Never longer than `base`
    would be otherwise: a base already above a third of the grace stays as it is. Rounded
    down to a tenth of a second, so that a fleet growing node by node changes it in steps
    and the rounding never takes it past the cap. (Nomad scales its heartbeat TTL with the
    fleet in the same way.)
    """
    scaled = min(fleet_size / max_per_second, grace / BEATS_PER_GRACE)
    return max(base, math.floor(scaled * 10 + 1e-9) / 10)


def _configured_interval(fleet_size: int) -> float:
    return interval_for(
        fleet_size,
        base=settings.AGENT_HEARTBEAT_SECONDS,
        grace=settings.NODE_GRACE_SECONDS,
        max_per_second=settings.AGENT_MAX_HEARTBEATS_PER_SECOND,
    )


def longest_interval() -> float:
    """The longest interval any agent may have been told (whatever the fleet size)."""
    return _configured_interval(1 << 62)


# (fleet size, its interval): asked at every heartbeat, it changes only with the fleet's
# size (read at each flush) or the settings. Reading three settings through Django's lazy
# settings object at every beat was 3 % of a busy web process's CPU.
_interval_memo: tuple[int, float] | None = None


def interval() -> float:
    """The heartbeat interval this web process tells its agents now."""
    global _interval_memo
    memo = _interval_memo
    if memo is None or memo[0] != _fleet_size:
        memo = _interval_memo = (_fleet_size, _configured_interval(_fleet_size))
    return memo[1]


@receiver(setting_changed)
def _forget_interval(**kwargs) -> None:
    global _interval_memo
    _interval_memo = None


def data_epoch() -> int:
    """Bumped whenever a flush finds that Redis lost its data: agent consumers that joined
    their node's group before then join again (web/consumers/agent.py)."""
    return _data_epoch


# A heartbeat is stamped when this process handles it, so an event loop running late
# stamps beats late, and the node monitor may call nodes silent that are not: such lags
# are logged (the operator's cue to add web processes or cores).
LAG_CHECK_SECONDS = 0.5
LAG_WARNING_SECONDS = 2.0

# Who hears the agents. Every web process sets RECEIVING_KEY every LAG_CHECK_SECONDS, to expire
# RECEIVING_TTL_MS later (Redis's own clock: no skew between machines), and
# RECEIVERS_SEEN_KEY for good. Both there: heartbeats are being heard. Only the second: no
# web process has kept time for RECEIVING_TTL_MS (the web server restarts, or its event
# loop stalls), so a missing beat says nothing about the node, and the node monitor holds
# its judgement (receivers_silent). Neither (Redis lost its data, or no web process ever
# ran): the monitor judges as always. A process shutting down goes on saying it hears
# until it ends (an agent can close with 1012 too, so the close code cannot tell it).
RECEIVING_KEY = "berth:heartbeats:receiving"
RECEIVERS_SEEN_KEY = "berth:heartbeats:receivers-seen"
RECEIVING_TTL_MS = 3000


async def watch_lag() -> None:
    """Log whenever this event loop runs LAG_WARNING_SECONDS late, and say every
    LAG_CHECK_SECONDS that this process hears heartbeats (RECEIVING_KEY), until cancelled (a
    web process starts it once, at startup: web/lifespan.py)."""
    import asyncio

    loop = asyncio.get_running_loop()
    stamper = loop.create_task(_say_receiving(), name="berth-receiving")
    try:
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_CHECK_SECONDS)
            late = loop.time() - started - LAG_CHECK_SECONDS
            if late >= LAG_WARNING_SECONDS:
                log.warning(
                    "this web process's event loop ran %.1f s late: agents' heartbeats waited that "
                    "long (the node grace is %g s); it needs more CPU or more web processes",
                    late, settings.NODE_GRACE_SECONDS,
                )  # fmt: skip
    finally:
        stamper.cancel()


async def _say_receiving() -> None:
    import asyncio

    client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    failed = False
    try:
        while True:
            try:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.set(RECEIVING_KEY, "1", px=RECEIVING_TTL_MS)
                    pipe.set(RECEIVERS_SEEN_KEY, "1")  # again after a Redis that lost its data
                    await pipe.execute()
                failed = False
            except Exception as exc:  # Redis restarting (the monitor cannot run either): go on
                if not failed:
                    log.warning("could not say that this process hears heartbeats: %s", exc)
                failed = True
            await asyncio.sleep(LAG_CHECK_SECONDS)
    finally:
        await client.aclose()


# Knocks: a node's agent was heard at the door (web/consumers/agent_gate.py) without a
# session yet. They keep its node alive like beats, but only a session's beat tells the
# node monitor that the agent is back in after a web restart (rejoin_allowance).
KNOCKS_KEY = "berth:heartbeats:knocks"
_knocks: dict = {}  # event loop -> {node_id: timestamp}


async def record(node_id: int, timestamp: float, *, knock: bool = False) -> None:
    """A heartbeat of a node's session, or (`knock`) its agent knocking at the door."""
    import asyncio

    loop = asyncio.get_running_loop()
    (_knocks if knock else _pending).setdefault(loop, {})[str(node_id)] = repr(timestamp)
    flusher = _flushers.get(loop)
    if flusher is None or flusher.done():
        _flushers[loop] = loop.create_task(_flush_soon(loop))


async def _flush_soon(loop) -> None:
    import asyncio

    await asyncio.sleep(FLUSH_SECONDS)
    await flush(loop)


async def flush(loop=None) -> None:
    """Write the buffered heartbeats of this event loop now."""
    import asyncio

    loop = loop or asyncio.get_running_loop()
    batch = _pending.pop(loop, None)
    knocks = _knocks.pop(loop, None)
    if knocks:
        await _flush_knocks(loop, knocks)
    if not batch:
        return
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    global _data_epoch, _fleet_size
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(KEY, mapping=batch)
            pipe.set(PRESENCE_KEY, "1", nx=True)
            pipe.hlen(KEY)
            _, fresh, size = await pipe.execute()
        # A Redis that lost its data holds only the beats since: the fleet did not shrink
        # with it, and telling every agent to beat faster now would only add to the storm.
        _fleet_size = max(size, _fleet_size) if fresh else size
        if fresh:
            _data_epoch += 1  # the first flush of a process too: a rejoin is harmless
    except redis.RedisError as exc:
        # Redis is restarting: these beats are lost, the agents' next ones (a second or two
        # later) get through, and the node monitor gives every node a fresh grace after a
        # Redis that lost its data (tracking_since).
        log.warning("could not record %d heartbeat(s): %s", len(batch), exc)


async def _flush_knocks(loop, knocks: dict) -> None:
    client = _async_clients.get(loop)
    if client is None:
        client = _async_clients[loop] = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(KNOCKS_KEY, mapping=knocks)
            # Knocks matter only while a fleet rejoins: the key goes once they stop, so the
            # node monitor's pass does not read a fleet's worth of stale ones every second.
            pipe.expire(KNOCKS_KEY, math.ceil(settings.NODE_GRACE_SECONDS + rejoin_allowance()))
            await pipe.execute()
    except redis.RedisError as exc:
        log.warning("could not record %d knock(s): %s", len(knocks), exc)


def tracking_since(now: float) -> tuple[float, bool]:
    """Since when heartbeats have been recorded here, and whether that starts now.

    A Redis that restarted or was flushed holds no heartbeats at all, although the agents
    are fine: the node monitor must then give every node a whole grace from this moment (and
    the rejoin allowance to one not heard since) before calling it silent. The first call
    after the loss (or ever) sets the mark and gets (now, True); later calls get the mark
    and False. A web process that starts moves the mark to its start (restart_tracking):
    its agents are reconnecting.
    """
    client = _client()
    if client.set(EPOCH_KEY, repr(now), nx=True):
        return now, True
    value = client.get(EPOCH_KEY)
    return (float(value), False) if value else (now, False)


# The longest wait an agent draws between two attempts to connect (its back-off's cap,
# agent/reconnect.py; a busy answer's wait is shorter).
AGENT_LONGEST_WAIT = 30.0


def rejoin_allowance() -> float:
    """Seconds a node not heard since heartbeats were tracked afresh (a web process started,
    web processes hear again after none did, Redis lost the beats) has on top of its grace:
    its agent may be waiting out its longest draw, or a handshake stuck in a listen backlog,
    while the whole fleet knocks at once. A node heard since is judged from its beat as
    always."""
    return max(settings.NODE_GRACE_SECONDS, AGENT_LONGEST_WAIT)


async def restart_tracking(now: float) -> None:
    """A web process started: heartbeats count from `now` (see tracking_since and
    rejoin_allowance). It also learns the fleet's size, so that the agents reconnecting to
    it are welcomed with the interval the fleet calls for, not the base."""
    global _fleet_size
    client = aioredis.Redis.from_url(settings.REDIS_URL, socket_timeout=5)
    try:
        await client.set(EPOCH_KEY, repr(now))
        _fleet_size = await client.hlen(KEY)
    finally:
        await client.aclose()


# The monitor holds its judgement this long at most: web processes gone for good (or
# crashing before they serve) must not keep dead nodes Ready for ever.
HOLD_LIMIT_SECONDS = 300.0
SILENT_SINCE_KEY = "berth:heartbeats:silent-since"
_hold_expired_said = False


def receivers_silent(now: float) -> bool:
    """True when web processes have run but none says it hears heartbeats now (see
    RECEIVING_KEY), for at most HOLD_LIMIT_SECONDS: the node monitor must not call nodes
    silent meanwhile. Heartbeats then count from `now` (the mark tracking_since reads), so
    that when a web process hears them again every node not heard since has its rejoin
    allowance and a whole grace for its agent's next beat to arrive."""
    global _hold_expired_said
    client = _client()
    with client.pipeline(transaction=False) as pipe:
        pipe.exists(RECEIVERS_SEEN_KEY)
        pipe.exists(RECEIVING_KEY)
        pipe.get(SILENT_SINCE_KEY)
        seen, receiving, silent_since = pipe.execute()
    if not seen or receiving:
        if silent_since is not None:
            client.delete(SILENT_SINCE_KEY)
        _hold_expired_said = False
        return False
    if silent_since is None:
        client.set(SILENT_SINCE_KEY, repr(now), nx=True)
    elif now - float(silent_since) > HOLD_LIMIT_SECONDS:
        if not _hold_expired_said:
            log.error(
                "no web process has heard the agents' heartbeats for %.0f s: judging nodes again "
                "(is the web server running?)", now - float(silent_since),
            )  # fmt: skip
            _hold_expired_said = True
        return False
    client.set(EPOCH_KEY, repr(now))
    return True


def read_all() -> dict[int, float]:
    """Every node's last heartbeat as a Unix time; empty if Redis lost them (it restarts)."""
    return {int(k): float(v) for k, v in _client().hgetall(KEY).items()}


def read_knocks() -> dict[int, float]:
    """Every node's last knock (see KNOCKS_KEY) as a Unix time."""
    return {int(k): float(v) for k, v in _client().hgetall(KNOCKS_KEY).items()}


def forget(node_id: int) -> None:
    _client().hdel(KEY, str(node_id))
    _client().hdel(KNOCKS_KEY, str(node_id))
