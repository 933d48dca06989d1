"""web.gc_pauses: long collector pauses are logged, short ones are not."""

import gc
import logging

from web import gc_pauses


def test_a_long_pause_is_logged_and_a_short_one_is_not(monkeypatch, caplog):
    monkeypatch.setattr(gc_pauses, "_installed", False)
    before = list(gc.callbacks)
    clock = iter([10.0, 10.1, 20.0, 21.5])  # start, stop (0.1 s); start, stop (1.5 s)
    monkeypatch.setattr(gc_pauses.time, "perf_counter", lambda: next(clock))
    was_enabled = gc.isenabled()
    gc.disable()  # no real collection calls the callback meanwhile
    try:
        gc_pauses.watch()
        gc_pauses.watch()  # once only
        (callback,) = [c for c in gc.callbacks if c not in before]
        with caplog.at_level(logging.WARNING, logger="web.gc_pauses"):
            callback("start", {"generation": 0})
            callback("stop", {"generation": 0, "collected": 3})
            callback("start", {"generation": 2})
            callback("stop", {"generation": 2, "collected": 7})
    finally:
        gc.callbacks[:] = before
        if was_enabled:
            gc.enable()
    assert [r.getMessage() for r in caplog.records] == [
        "garbage collection (generation 2, 7 object(s) collected) paused this web process 1.5 s"
    ]
