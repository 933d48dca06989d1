"""The garbage collector in long-running processes (web processes, Celery pool workers):
tuned so that its full collections stay rare, and logged when one still pauses long.

A full collection stops the whole process. In a web process holding thousands of agents'
sessions it took 1 to 2.3 s, every few seconds under load (92 pauses of half a second or
more in one 100,000-replica benchmark run), collecting almost nothing: with the default
thresholds an object that lives for a few hundred allocations (a report waiting for its
batch, a frame being sent) is promoted to the oldest generation, and once a quarter more
objects sit there than after the last full collection, the next one walks all of them.
Every heartbeat the process holds waits meanwhile, and healthy nodes look silent.

So, once the process has loaded its code, what exists is frozen (never walked again:
modules, classes, settings), and young collections run every 50,000 allocations instead
of 700, so short-lived objects die of their reference count before any collection sees
them. Garbage in reference cycles is still collected, a little later.
"""

import gc
import logging
import time

log = logging.getLogger(__name__)

PAUSE_LOGGED = 0.5  # seconds
YOUNG_THRESHOLD = 50_000
_installed = False


def tune(process: str) -> None:
    """Freeze what is loaded, raise the young threshold, and log long pauses of `process`
    (a name for the log). Once per process; later calls do nothing."""
    global _installed
    if _installed:
        return
    _installed = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    started = [0.0]

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        elif (paused := time.perf_counter() - started[0]) >= PAUSE_LOGGED:
            log.warning(
                "garbage collection (generation %s, %s object(s) collected) paused this %s %.1f s",
                info.get("generation"), info.get("collected"), process, paused,
            )  # fmt: skip

    gc.callbacks.append(callback)
