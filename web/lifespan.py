"""The ASGI lifespan of a web process (uvicorn sends `lifespan.startup` before serving)."""

import asyncio
import logging
import time

from config import gc_tuning
from nodes import heartbeats

log = logging.getLogger(__name__)


async def lifespan(scope, receive, send):
    """On startup, restart the heartbeat clock: the agents whose sessions ended with the
    previous web process need a moment to reconnect and beat again, and the node monitor
    gives every node a whole grace from now before calling it silent (nodes.heartbeats).
    Also tunes the garbage collector (config/gc_tuning.py) and watches the event loop for
    lags that would stamp heartbeats late."""
    lag_watcher = None
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            gc_tuning.tune("web process")
            lag_watcher = asyncio.get_running_loop().create_task(
                heartbeats.watch_lag(), name="berth-loop-lag"
            )
            try:
                await heartbeats.restart_tracking(time.time())
            except Exception as exc:  # Redis is down: nothing to protect (the monitor cannot run)
                log.warning("could not restart the heartbeat clock: %s", exc)
            # Agents knocking before their turn to join are recognised (their knock is their
            # heartbeat) from the first one on: web/consumers/admission.py.
            from web.consumers.agent_gate import read_credentials

            await read_credentials()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if lag_watcher is not None:
                lag_watcher.cancel()
            await send({"type": "lifespan.shutdown.complete"})
            return
