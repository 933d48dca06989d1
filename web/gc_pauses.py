"""Logging the garbage collector's long pauses in a web process.

A full collection stops the whole process: every agent's heartbeat it holds waits, and a
pause near the node grace makes healthy nodes look silent. Pauses past PAUSE_LOGGED are
logged, so such a false NotReady can be told from a real one.
"""

import gc
import logging
import time

log = logging.getLogger(__name__)

PAUSE_LOGGED = 0.5  # seconds
_installed = False


def watch() -> None:
    """Start logging long pauses in this process (once; later calls do nothing)."""
    global _installed
    if _installed:
        return
    _installed = True
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (paused := time.perf_counter() - started[0]) >= PAUSE_LOGGED:
            log.warning(
                "garbage collection (generation %s, %s object(s) collected) paused this web process %.1f s",
                info.get("generation"), info.get("collected"), paused,
            )  # fmt: skip

    gc.callbacks.append(callback)
