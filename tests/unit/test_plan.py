from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.controllers.plan import (
    ACTIVE,
    RECREATE,
    ReplicaState,
    Rollout,
    compute_plan,
    resolve_amount,
    resolve_rollout,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def replica(name, phase="Running", revision="r1", node=1, age=0, available=None, **flags):
    if available is None:
        available = phase == "Running"
    return ReplicaState(name, revision, phase, node, T0 + timedelta(seconds=age), available, **flags)


def test_scale_up_from_nothing_creates_all():
    plan = compute_plan(3, "r1", [])
    assert (plan.create, plan.terminate, plan.delete) == (3, [], [])


def test_converged_deployment_plans_nothing():
    assert compute_plan(2, "r1", [replica("a"), replica("b")]).is_empty


def test_scale_down_prefers_unplaced_then_least_useful_then_newest():
    replicas = [
        replica("running-old", age=0),
        replica("running-new", age=10),
        replica("failed", phase="Failed", age=5),
        replica("unplaced", phase="Pending", node=None, age=1),
    ]
    plan = compute_plan(1, "r1", replicas)
    assert plan.delete == ["unplaced"]
    assert plan.terminate == ["failed", "running-new"]
    assert plan.create == 0


def test_terminating_replicas_do_not_count_and_are_not_touched():
    plan = compute_plan(2, "r1", [replica("a"), replica("b", phase="Terminating")])
    assert plan.create == 1 and plan.terminate == [] and plan.delete == []


def test_terminating_replica_without_node_is_dropped():
    plan = compute_plan(0, "r1", [replica("orphan", phase="Terminating", node=None)])
    assert plan.delete == ["orphan"]


def test_surge_only_rollout_keeps_old_replicas_until_new_ones_are_available():
    surge_only = Rollout(max_surge=2, max_unavailable=0)
    old = [replica("old-1"), replica("old-2")]
    plan = compute_plan(2, "r2", old, surge_only)
    assert plan.create == 2 and plan.terminate == []
    new_starting = [
        replica("new-1", revision="r2", phase="Starting"),
        replica("new-2", revision="r2", phase="Running"),
    ]
    plan = compute_plan(2, "r2", old + new_starting, surge_only)
    assert plan.create == 0 and len(plan.terminate) == 1
    running_not_ready = [replica("new-1", revision="r2", available=False), new_starting[1]]
    assert len(compute_plan(2, "r2", old + running_not_ready, surge_only).terminate) == 1
    new_available = [replica("new-1", revision="r2"), replica("new-2", revision="r2")]
    assert sorted(compute_plan(2, "r2", old + new_available, surge_only).terminate) == ["old-1", "old-2"]


def test_rolling_update_respects_surge_and_unavailable():
    old = [replica(f"old-{i}") for i in range(4)]
    plan = compute_plan(4, "r2", old, Rollout(max_surge=1, max_unavailable=1))
    # One old one may go (4 - 1 available), which leaves room for two new ones (4 + 1 surge).
    assert plan.create == 2 and len(plan.terminate) == 1


def test_rolling_update_with_no_surge_stops_before_it_starts():
    old = [replica(f"old-{i}") for i in range(4)]
    plan = compute_plan(4, "r2", old, Rollout(max_surge=0, max_unavailable=1))
    assert plan.create == 1 and len(plan.terminate) == 1  # its replacement in the room it left
    remaining = [*old[1:], replica("new-1", revision="r2", phase="Starting")]
    plan = compute_plan(4, "r2", remaining, Rollout(max_surge=0, max_unavailable=1))
    assert plan.create == 0 and plan.terminate == []  # until new-1 is available


def test_unavailable_old_replicas_go_first_and_cost_no_availability():
    old = [replica("old-ok-1"), replica("old-ok-2"), replica("old-broken", phase="Failed")]
    plan = compute_plan(3, "r2", old, Rollout(max_surge=1, max_unavailable=0))
    assert plan.create == 1 and plan.terminate == []  # the new one is not available yet
    new = [replica("new-1", revision="r2")]
    plan = compute_plan(3, "r2", old + new, Rollout(max_surge=1, max_unavailable=0))
    assert plan.terminate == ["old-broken"] and plan.create == 1


def test_recreate_stops_everything_old_then_waits_for_it_to_stop():
    old = [replica("old-1"), replica("old-2", revision="r0")]
    strategy = Rollout(type=RECREATE, max_surge=0, max_unavailable=2)
    plan = compute_plan(2, "r2", old, strategy)
    assert sorted(plan.terminate) == ["old-1", "old-2"] and plan.create == 0
    stopping = [replica("old-1", phase="Terminating"), replica("old-2", phase="Terminating")]
    assert compute_plan(2, "r2", stopping, strategy).create == 0
    lost = [replica("old-1", phase="Terminating", lost=True)]
    assert compute_plan(2, "r2", lost, strategy).create == 2  # nobody will confirm it stopped
    assert compute_plan(2, "r2", [], strategy).create == 2


def test_paused_rollout_only_scales_and_copies_the_old_revision():
    old = [replica("old-1")]
    paused = Rollout(max_surge=1, max_unavailable=0, paused=True)
    plan = compute_plan(3, "r2", old, paused)
    assert plan.create == 2 and plan.create_revision == "r1" and plan.terminate == []
    assert compute_plan(1, "r2", old, paused).is_empty
    assert compute_plan(3, "r2", [], paused).create_revision is None


def test_draining_replicas_move_like_old_ones():
    replicas = [replica("a", node=1, draining=True), replica("b", node=2)]
    plan = compute_plan(2, "r1", replicas, Rollout(max_surge=1, max_unavailable=0))
    assert plan.create == 1 and plan.terminate == []
    replicas.append(replica("c", node=3))
    assert compute_plan(2, "r1", replicas, Rollout(max_surge=1, max_unavailable=0)).terminate == ["a"]


@pytest.mark.parametrize(
    ("value", "desired", "round_up", "expected"),
    [
        (3, 10, True, 3),
        ("25%", 10, True, 3),
        ("25%", 10, False, 2),
        ("0%", 4, True, 0),
        ("100%", 4, False, 4),
    ],
)
def test_resolve_amount(value, desired, round_up, expected):
    assert resolve_amount(value, desired, round_up=round_up) == expected


def test_resolve_rollout_never_leaves_both_at_zero():
    rollout = resolve_rollout({"type": "RollingUpdate", "max_surge": "10%", "max_unavailable": "10%"}, 4)
    assert (rollout.max_surge, rollout.max_unavailable) == (1, 0)
    rollout = resolve_rollout({"type": "RollingUpdate", "max_surge": 0, "max_unavailable": "10%"}, 4)
    assert (rollout.max_surge, rollout.max_unavailable) == (0, 1)


phases = st.sampled_from(sorted(ACTIVE | {"Terminating"}))
replica_lists = st.lists(
    st.builds(
        ReplicaState,
        name=st.uuids().map(str),
        revision=st.sampled_from(["r1", "r2"]),
        phase=phases,
        node_id=st.one_of(st.none(), st.integers(1, 3)),
        created_at=st.integers(0, 1000).map(lambda s: T0 + timedelta(seconds=s)),
        available=st.booleans(),
        draining=st.booleans(),
    ),
    max_size=20,
    unique_by=lambda r: r.name,
)
rollouts = st.builds(
    Rollout,
    type=st.sampled_from(["RollingUpdate", "Recreate"]),
    max_surge=st.integers(0, 3),
    max_unavailable=st.integers(0, 3),
    paused=st.booleans(),
)


@given(desired=st.integers(0, 15), replicas=replica_lists, rollout=rollouts)
def test_plan_only_stops_existing_replicas_once_through_the_right_path(desired, replicas, rollout):
    plan = compute_plan(desired, "r1", replicas, rollout)
    names = {r.name for r in replicas}
    stopped = set(plan.terminate) | set(plan.delete)
    assert stopped <= names
    assert len(plan.terminate) + len(plan.delete) == len(stopped)
    by_name = {r.name: r for r in replicas}
    assert all(by_name[n].node_id is not None for n in plan.terminate)
    assert all(by_name[n].node_id is None for n in plan.delete)
    assert plan.create >= 0


@given(desired=st.integers(0, 15), replicas=replica_lists, rollout=rollouts)
def test_plan_is_deterministic(desired, replicas, rollout):
    again = compute_plan(desired, "r1", list(replicas), rollout)
    assert compute_plan(desired, "r1", replicas, rollout) == again


def _simulate(desired, old_count, rollout, ready_order, max_steps=200):
    """Run a rollout from `old_count` available replicas of r1 to r2, one plan per step.
    Each step, created replicas start unavailable, stopped ones vanish, and the replicas
    listed by `ready_order` become available one by one. Yields the state after each step."""
    replicas = {f"old-{i}": replica(f"old-{i}", age=i) for i in range(old_count)}
    counter = 0
    for step in range(max_steps):
        plan = compute_plan(desired, "r2", list(replicas.values()), rollout)
        for name in plan.terminate + plan.delete:
            del replicas[name]
        for _ in range(plan.create):
            counter += 1
            name = f"new-{counter}"
            replicas[name] = replica(name, "Starting", "r2", available=False, age=1000 + counter)
        yield plan, dict(replicas)
        pending = [r for r in replicas.values() if not r.available]
        if pending and ready_order[step % len(ready_order)]:
            r = pending[0]
            replicas[r.name] = ReplicaState(r.name, r.revision, "Running", r.node_id, r.created_at, True)
        if not pending and all(r.revision == "r2" for r in replicas.values()) and len(replicas) == desired:
            return


@settings(max_examples=200, deadline=None)
@given(
    desired=st.integers(1, 12),
    old_count=st.integers(0, 12),
    surge=st.integers(0, 4),
    unavailable=st.integers(0, 4),
    ready_order=st.lists(st.booleans(), min_size=1, max_size=5).filter(any),
)
def test_rolling_update_stays_within_surge_and_availability_and_finishes(
    desired, old_count, surge, unavailable, ready_order
):
    rollout = resolve_rollout({"max_surge": surge, "max_unavailable": unavailable}, desired)
    min_available = desired - rollout.max_unavailable
    last = None
    for _plan, state in _simulate(desired, old_count, rollout, ready_order):
        available = sum(1 for r in state.values() if r.available)
        assert len(state) <= max(desired + rollout.max_surge, old_count)
        # Availability only drops below the floor if it started below it.
        assert available >= min(min_available, old_count)
        last = state
    assert last is not None
    assert sorted(r.revision for r in last.values()) == ["r2"] * desired
