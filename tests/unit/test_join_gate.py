"""web/consumers/admission.py: the bound on agents joining a web process at once, and the
credential index that recognises a refused agent without the database."""

import pytest

from web.consumers import admission
from web.consumers.admission import CredentialIndex, JoinGate, retry_after


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_the_gate_admits_up_to_its_limit_and_a_leaving_join_makes_room():
    gate = JoinGate(2, clock=Clock())
    first, second = gate.enter(), gate.enter()
    assert first is not None and second is not None and first is not second
    assert gate.enter() is None and gate.in_flight == 2
    gate.leave(first)
    gate.leave(first)  # twice: no room made twice
    third = gate.enter()
    assert third is not None and gate.enter() is None
    gate.leave(None)  # a refused join has no slot
    assert gate.in_flight == 2


def test_a_join_that_never_finishes_gives_its_slot_back_after_a_while():
    clock = Clock()
    gate = JoinGate(1, clock=clock)
    stuck = gate.enter()
    clock.now += admission.JOIN_SLOT_SECONDS
    assert gate.enter() is None  # not yet
    clock.now += 0.1
    fresh = gate.enter()
    assert fresh is not None and fresh is not stuck
    gate.leave(stuck)  # late: takes nothing from the new one
    assert gate.in_flight == 1


@pytest.mark.parametrize(("grace", "seconds"), [(10, 3), (40, 5), (3, 1), (1, 1), (15, 5)])
def test_refused_agents_come_back_well_within_the_grace(grace, seconds):
    assert retry_after(grace) == seconds
    # The agent waits up to 1.5 times that (agent/session.py busy_wait): a knock is a beat.
    assert 1.5 * seconds < grace or grace < 2


def test_the_credential_index_reloads_at_most_every_few_seconds_and_forgets_on_reload():
    clock = Clock()
    index = CredentialIndex(clock=clock)
    assert index.lookup("h1") is None and index.wants_reload()
    index.replace({"h1": 1, "h2": 2})
    index.remember("h3", 3)  # a join since
    assert (index.lookup("h1"), index.lookup("h3")) == (1, 3)
    assert not index.wants_reload()
    clock.now += admission.RELOAD_SECONDS
    assert index.wants_reload()
    index.loading = True
    assert not index.wants_reload()  # one reload at a time
    index.loading = False
    index.replace({"h1-rotated": 1})
    assert index.lookup("h1") is None and index.lookup("h3") is None and index.lookup("h1-rotated") == 1


def test_a_credential_the_database_refused_is_forgotten_at_once():
    index = CredentialIndex(clock=Clock())
    index.replace({"old": 1})
    index.forget("old")
    index.forget("never-known")
    assert index.lookup("old") is None
