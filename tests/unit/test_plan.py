from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.controllers.plan import ACTIVE, ReplicaState, compute_plan

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def replica(name, phase="Running", revision="r1", node=1, age=0):
    return ReplicaState(name, revision, phase, node, T0 + timedelta(seconds=age))


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


def test_new_revision_keeps_old_replicas_until_new_ones_run():
    old = [replica("old-1"), replica("old-2")]
    plan = compute_plan(2, "r2", old)
    assert plan.create == 2 and plan.terminate == []
    new_starting = [
        replica("new-1", revision="r2", phase="Starting"),
        replica("new-2", revision="r2", phase="Running"),
    ]
    plan = compute_plan(2, "r2", old + new_starting)
    assert plan.create == 0 and len(plan.terminate) == 1
    new_running = [replica("new-1", revision="r2"), replica("new-2", revision="r2")]
    assert sorted(compute_plan(2, "r2", old + new_running).terminate) == ["old-1", "old-2"]


phases = st.sampled_from(sorted(ACTIVE | {"Terminating"}))
replica_lists = st.lists(
    st.builds(
        ReplicaState,
        name=st.uuids().map(str),
        revision=st.sampled_from(["r1", "r2"]),
        phase=phases,
        node_id=st.one_of(st.none(), st.integers(1, 3)),
        created_at=st.integers(0, 1000).map(lambda s: T0 + timedelta(seconds=s)),
    ),
    max_size=20,
    unique_by=lambda r: r.name,
)


@given(desired=st.integers(0, 15), replicas=replica_lists)
def test_plan_properties(desired, replicas):
    plan = compute_plan(desired, "r1", replicas)
    names = {r.name for r in replicas}
    stopped = set(plan.terminate) | set(plan.delete)
    # Only existing replicas are stopped, each once, and never twice in one plan.
    assert stopped <= names
    assert len(plan.terminate) + len(plan.delete) == len(stopped)
    assert not set(plan.terminate) & set(plan.delete)
    # Stopping on a node goes through the agent; dropping a row only without a node.
    by_name = {r.name: r for r in replicas}
    assert all(by_name[n].node_id is not None for n in plan.terminate)
    assert all(by_name[n].node_id is None for n in plan.delete)
    # After the plan: exactly `desired` active replicas of the current revision.
    current_after = (
        sum(1 for r in replicas if r.phase in ACTIVE and r.revision == "r1" and r.name not in stopped)
        + plan.create
    )
    assert current_after == desired
    # Old replicas are only retired as far as current ones are running.
    running_current = sum(
        1 for r in replicas if r.revision == "r1" and r.phase == "Running" and r.name not in stopped
    )
    old_left = sum(1 for r in replicas if r.phase in ACTIVE and r.revision != "r1" and r.name not in stopped)
    old_total = sum(1 for r in replicas if r.phase in ACTIVE and r.revision != "r1")
    assert old_left == max(0, min(desired, old_total) - running_current)


@given(desired=st.integers(0, 15), replicas=replica_lists)
def test_plan_is_deterministic(desired, replicas):
    assert compute_plan(desired, "r1", replicas) == compute_plan(desired, "r1", list(replicas))
