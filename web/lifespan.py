"""The ASGI lifespan of a web process (uvicorn sends `lifespan.startup` before serving)."""

import logging
import time

from config import gc_tuning
from nodes import heartbeats

log = logging.getLogger(__name__)


async def lifespan(scope, receive, send):
    """On startup, restart the heartbeat clock: the agents whose sessions ended with the
    previous web process need a moment to reconnect and beat again, and the node monitor
    gives every node a whole grace from now before calling it silent (nodes.heartbeats)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            gc_tuning.tune("web process")
            try:
                await heartbeats.restart_tracking(time.time())
            except Exception as exc:  # Redis is down: nothing to protect (the monitor cannot run)
                log.warning("could not restart the heartbeat clock: %s", exc)
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
