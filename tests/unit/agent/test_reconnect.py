"""Reconnection delays: exponential ceiling, full jitter below it, reset after a healthy session."""

from __future__ import annotations

from agent.reconnect import ReconnectDelay


def test_ceiling_doubles_up_to_the_cap_and_resets():
    delay = ReconnectDelay(base=0.5, cap=30.0, rng=lambda: 1.0)
    assert [round(delay.next(), 3) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    delay.reset()
    assert delay.next() == 0.5


def test_full_jitter_stays_below_the_ceiling():
    delay = ReconnectDelay(base=0.5, cap=30.0)
    for _ in range(200):
        ceiling = delay.ceiling()
        assert 0 <= delay.next() <= ceiling


def test_right_after_a_healthy_session_delays_stay_short_then_back_off():
    """A control-plane restart: the agent keeps knocking at most a second apart for the first
    seconds (so its node does not outlive the heartbeat grace), then backs off as usual."""
    now = [100.0]
    delay = ReconnectDelay(base=0.5, cap=30.0, rng=lambda: 1.0, clock=lambda: now[0])
    delay.reset()  # a healthy session just ended
    short = []
    for _ in range(6):
        short.append(delay.next())
        now[0] += short[-1]
    assert short == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    now[0] += 30  # a web server that takes half a minute to come back
    assert delay.next() == 1.0
    now[0] += 30
    assert delay.next() == 30.0  # past the window: the ceiling the attempts have reached


def test_a_short_welcomed_session_keeps_delays_short_without_forgetting_failures():
    now = [0.0]
    delay = ReconnectDelay(base=0.5, cap=30.0, rng=lambda: 1.0, clock=lambda: now[0])
    assert [delay.next() for _ in range(4)] == [0.5, 1.0, 2.0, 4.0]  # failures before
    now[0] = 100.0
    delay.hurry()  # welcomed, then closed at once (a restart)
    assert delay.next() == 1.0
    now[0] = 200.0
    assert delay.next() == 16.0  # the back-off went on counting (sixth attempt)
