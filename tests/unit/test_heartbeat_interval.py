"""How often agents heartbeat as the fleet grows (nodes.heartbeats.interval_for, pure)."""

import pytest

from nodes.heartbeats import interval_for


@pytest.mark.parametrize(
    ("fleet", "base", "grace", "rate", "expected"),
    [
        (0, 2.0, 10.0, 1000.0, 2.0),  # no fleet yet: the base
        (2000, 2.0, 10.0, 1000.0, 2.0),  # 1,000 a second at the base
        (2500, 2.0, 10.0, 1000.0, 2.5),  # beyond: the fleet stays at 1,000 a second
        (3000, 2.0, 10.0, 1000.0, 3.0),
        (5000, 2.0, 10.0, 1000.0, 3.3),  # capped: three beats per grace at least
        (5000, 2.0, 11.0, 1000.0, 3.6),  # rounded down: 3 x 3.7 would not fit in 11 s
        (10**6, 2.0, 10.0, 1000.0, 3.3),
        (10**6, 2.0, 4.0, 1000.0, 2.0),  # a grace too short to scale: never below the base
        (5000, 1.0, 30.0, 50.0, 10.0),  # Nomad's 50 a second, a long grace
        (2049, 2.0, 10.0, 1000.0, 2.0),  # rounded to a tenth of a second
    ],
)
def test_interval_for(fleet, base, grace, rate, expected):
    assert interval_for(fleet, base=base, grace=grace, max_per_second=rate) == expected


@pytest.mark.parametrize("grace", [4.0, 7.0, 10.0, 11.0, 13.3, 40.0])
@pytest.mark.parametrize("fleet", [0, 999, 3333, 5000, 10**7])
def test_three_beats_fit_in_the_grace_unless_the_base_is_longer(grace, fleet):
    interval = interval_for(fleet, base=2.0, grace=grace, max_per_second=1000.0)
    assert interval == 2.0 or 3 * interval <= grace


def test_the_interval_told_follows_the_fleet_size_and_the_settings(settings, monkeypatch):
    from nodes import heartbeats

    settings.AGENT_HEARTBEAT_SECONDS = 2.0
    settings.NODE_GRACE_SECONDS = 10.0
    settings.AGENT_MAX_HEARTBEATS_PER_SECOND = 1000.0
    monkeypatch.setattr(heartbeats, "_fleet_size", 3000)
    assert heartbeats.interval() == 3.0
    monkeypatch.setattr(heartbeats, "_fleet_size", 5000)  # a flush counted more nodes
    assert heartbeats.interval() == 3.3
    settings.AGENT_MAX_HEARTBEATS_PER_SECOND = 2500.0  # the memo is not kept past a change
    assert heartbeats.interval() == 2.0
