"""Publishing many messages to channel-layer groups at once.

A group send through Redis is a few round trips. Sent one after another, a flush to
thousands of nodes waits out every one of them (about 1.4 ms a node on a busy machine);
sent together, they overlap; Berth's channel layer (config/channel_layer.py) sends them
all in a few round trips. They run on one event loop per process, kept in a thread of its
own, so the channel layer's Redis connections (bound to a loop) are opened once, not at
every call: a new loop per flush spent a tenth of the publishing in connecting.
"""

import asyncio
import os
import threading

from channels.layers import get_channel_layer

# Group sends in flight at once: enough to hide Redis round trips, few enough that the
# loop keeps a bounded number of connections.
CONCURRENCY = 32
# Beyond the channel layer's own socket timeout (config/settings.py: 30 s).
TIMEOUT_SECONDS = 60

_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def publishing_loop() -> asyncio.AbstractEventLoop:
    """This process's publishing loop, started on first use (and again in a forked child)."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():
            _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
            threading.Thread(target=_loop.run_forever, name="berth-publish", daemon=True).start()
        return _loop


def group_send_many(messages) -> None:
    """Send each (group, message) pair. All are attempted; the first error is raised after.
    Called from synchronous code (a Celery task, a request's thread), never from a loop."""
    messages = list(messages)
    if messages:
        asyncio.run_coroutine_threadsafe(_send_all(messages), publishing_loop()).result(TIMEOUT_SECONDS)


async def _send_all(messages: list[tuple[str, dict]]) -> None:
    layer = get_channel_layer()
    if hasattr(layer, "group_send_many"):  # ours: a few round trips for all (config/channel_layer.py)
        await layer.group_send_many(messages)
        return
    limit = asyncio.Semaphore(CONCURRENCY)

    async def send(group: str, message: dict) -> None:
        async with limit:
            await layer.group_send(group, message)

    results = await asyncio.gather(*(send(g, m) for g, m in messages), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise errors[0]
