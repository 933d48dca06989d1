"""config.gc_tuning: long collector pauses are logged, short ones are not; tuned once."""

import gc
import logging

from config import gc_tuning


def test_a_long_pause_is_logged_and_a_short_one_is_not(monkeypatch, caplog):
    monkeypatch.setattr(gc_tuning, "_installed", False)
    before, thresholds = list(gc.callbacks), gc.get_threshold()
    monkeypatch.setattr(gc, "freeze", lambda: None)  # the test process stays as it is
    was_enabled = gc.isenabled()
    try:
        gc_tuning.tune("web process")
        gc_tuning.tune("web process")  # once only
        (callback,) = [c for c in gc.callbacks if c not in before]
        assert gc.get_threshold() == (gc_tuning.YOUNG_THRESHOLD, *thresholds[1:])
        gc.disable()  # no real collection calls the callback meanwhile
        clock = iter([10.0, 10.1, 20.0, 21.5])  # start, stop (0.1 s); start, stop (1.5 s)
        monkeypatch.setattr(gc_tuning.time, "perf_counter", lambda: next(clock))
        with caplog.at_level(logging.WARNING, logger="config.gc_tuning"):
            callback("start", {"generation": 0})
            callback("stop", {"generation": 0, "collected": 3})
            callback("start", {"generation": 2})
            callback("stop", {"generation": 2, "collected": 7})
    finally:
        gc.callbacks[:] = before
        gc.set_threshold(*thresholds)
        if was_enabled:
            gc.enable()
    assert [r.getMessage() for r in caplog.records] == [
        "garbage collection (generation 2, 7 object(s) collected) paused this web process 1.5 s"
    ]
