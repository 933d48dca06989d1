"""The pure convergence planner: which actions for which desired/observed situation."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.converge import Create, Plan, Remove, Replace, Restart, Start, plan
from agent.replicas import ContainerState, ObservedContainer, RestartPolicy
from agent.restarts import RestartRecord, backoff_delay

from .builders import NODE, foreign, have, want

NOW = 1_000_000.0
S = ContainerState


def kinds(result: Plan) -> list[tuple[str, str]]:
    """(action type, container or replica name) pairs, sorted, for readable assertions."""
    out = []
    for action in result.actions:
        target = action.replica.container_name if isinstance(action, Create) else action.container.name
        out.append((type(action).__name__, target))
    return sorted(out)


CASES = [
    pytest.param(
        [want("a")], [], {}, [("Create", "default_a")], None, id="desired-without-container-is-created"
    ),
    pytest.param([], [have("a")], {}, [("Remove", "default_a")], None, id="undesired-container-is-removed"),
    pytest.param([want("a")], [have("a")], {}, [], None, id="running-desired-container-is-left-alone"),
    pytest.param([want("a")], [have("a", S.PAUSED)], {}, [], None, id="paused-is-left-alone"),
    pytest.param(
        [want("a")], [have("a", S.CREATED)], {}, [("Start", "default_a")], None, id="created-is-started"
    ),
    pytest.param(
        [want("a")],
        [have("a", S.EXITED, exit_code=1, started_at=NOW - 8, finished_at=NOW - 5)],
        {},
        [],
        NOW + 5,
        id="fresh-exit-waits-10s",
    ),
    pytest.param(
        [want("a")],
        [have("a", S.EXITED, exit_code=1, started_at=NOW - 15, finished_at=NOW - 11)],
        {},
        [("Restart", "default_a")],
        None,
        id="exit-older-than-10s-is-restarted",
    ),
    pytest.param(
        [want("a")],
        [have("a", S.EXITED, exit_code=0, started_at=NOW - 15, finished_at=NOW - 11)],
        {},
        [("Restart", "default_a")],
        None,
        id="exit-0-is-restarted-too",
    ),
    pytest.param(
        [want("a")],
        [have("a", S.EXITED, exit_code=1, started_at=NOW - 16, finished_at=NOW - 15)],
        {("default", "a"): RestartRecord(restart_count=1, streak=1)},
        [],
        NOW + 5,
        id="second-exit-waits-20s",
    ),
    pytest.param(
        [want("a")],
        [have("a", S.EXITED, exit_code=1, started_at=NOW - 700, finished_at=NOW - 11)],
        {("default", "a"): RestartRecord(restart_count=6, streak=6)},
        [("Restart", "default_a")],
        None,
        id="ten-minutes-running-resets-the-back-off",
    ),
    pytest.param(
        [want("a")],
        [have("a", S.EXITED, exit_code=1, started_at=NOW - 200, finished_at=NOW - 100)],
        {("default", "a"): RestartRecord(restart_count=9, streak=9)},
        [],
        NOW + 200,
        id="back-off-is-capped-at-5-minutes",
    ),
    pytest.param(
        [want("a", revision="r2")],
        [have("a", revision="r1")],
        {},
        [("Replace", "default_a")],
        None,
        id="other-revision-is-replaced",
    ),
    pytest.param(
        [want("a")], [have("a", S.DEAD)], {}, [("Replace", "default_a")], None, id="dead-is-replaced"
    ),
    pytest.param([want("a")], [have("a", S.REMOVING)], {}, [], None, id="removing-is-waited-for"),
    pytest.param(
        [want("a")],
        [have("a"), have("a", cid="dup", container="default_a-copy", started_at=NOW)],
        {},
        [("Remove", "default_a-copy")],
        None,
        id="duplicate-is-removed-canonical-name-kept",
    ),
    pytest.param(
        [want("a")],
        [],
        {("default", "a"): RestartRecord(failures=1, error="image not found", failed_at=NOW - 3)},
        [],
        NOW + 7,
        id="failed-create-waits-for-its-retry",
    ),
    pytest.param(
        [want("a")],
        [],
        {("default", "a"): RestartRecord(failures=2, error="image not found", failed_at=NOW - 21)},
        [("Create", "default_a")],
        None,
        id="failed-create-is-retried-after-back-off",
    ),
    pytest.param(
        [want("a")],
        [have("a", S.CREATED)],
        {("default", "a"): RestartRecord(failures=1, error="port is already allocated", failed_at=NOW - 1)},
        [],
        NOW + 9,
        id="failed-start-waits-for-its-retry",
    ),
    pytest.param(
        [],
        [
            ObservedContainer(
                id="x", name="odd", state=S.RUNNING, labels={"berth.managed": "true", "berth.node": NODE}
            )
        ],
        {},
        [("Remove", "odd")],
        None,
        id="owned-container-without-replica-labels-is-removed",
    ),
    pytest.param(
        [want("a")],
        [have("a", node="h2", cid="other-node"), foreign("default_b", "unmanaged")],
        {},
        [("Create", "default_a")],
        None,
        id="other-nodes-and-unmanaged-containers-are-ignored",
    ),
    pytest.param(
        [],
        [foreign("db", "human", labels={"berth.managed": "false", "berth.node": NODE})],
        {},
        [],
        None,
        id="berth-managed-false-is-not-ours",
    ),
]


@pytest.mark.parametrize(("desired", "observed", "restarts", "expected", "wake_at"), CASES)
def test_plan(desired, observed, restarts, expected, wake_at):
    result = plan(desired, observed, NOW, restarts, node=NODE)
    assert kinds(result) == sorted(expected)
    assert result.wake_at == wake_at


def test_replace_carries_the_new_replica():
    (action,) = plan([want("a", revision="r2")], [have("a", revision="r1")], NOW, {}, node=NODE).actions
    assert isinstance(action, Replace)
    assert action.replica.revision == "r2"
    assert "r1" in action.reason and "r2" in action.reason


def test_backoff_schedule():
    assert [backoff_delay(n) for n in range(8)] == [10, 20, 40, 80, 160, 300, 300, 300]


def test_restart_record_counts_and_streak():
    exited = have("a", S.EXITED, exit_code=1, started_at=NOW - 5, finished_at=NOW - 1)
    record = RestartRecord().after_restart(exited).after_restart(exited)
    assert (record.restart_count, record.streak) == (2, 2)
    assert record.restart_due_at(exited) == NOW - 1 + 40
    long_run = replace(exited, started_at=NOW - 1000)
    assert record.after_restart(long_run).streak == 1  # the long run reset the streak first
    assert record.after_restart(long_run).restart_count == 3


# -- property: planning then applying converges, without touching what is not ours -----------

NAMES = ["a", "b", "c"]
NAMESPACES = ["default", "prod"]
_ids = itertools.count()


@st.composite
def situations(draw):
    keys = [(ns, n) for ns in NAMESPACES for n in NAMES]
    desired_keys = draw(st.lists(st.sampled_from(keys), unique=True))
    desired = [
        want(
            n,
            ns,
            revision=draw(st.sampled_from(["r1", "r2"])),
            restart_policy=draw(st.sampled_from(list(RestartPolicy))),
        )
        for ns, n in desired_keys
    ]

    observed: list[ObservedContainer] = []
    canonical_used: set[tuple[str, str]] = set()
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["ours", "ours", "ours", "other-node", "unmanaged", "unlabelled"]))
        state = draw(st.sampled_from(list(S)))
        times = {
            "started_at": NOW - draw(st.integers(0, 2000)),
            "finished_at": NOW - draw(st.integers(0, 400)) if state in (S.EXITED, S.DEAD) else None,
            "exit_code": draw(st.integers(0, 2)) if state in (S.EXITED, S.DEAD) else None,
        }
        if kind == "unmanaged":
            observed.append(foreign(f"human-{i}", f"f{i}", state=state))
            continue
        if kind == "unlabelled":
            labels = {"berth.managed": "true", "berth.node": NODE}
            observed.append(ObservedContainer(id=f"u{i}", name=f"stray-{i}", state=state, labels=labels))
            continue
        ns, n = draw(st.sampled_from(keys))
        node = NODE if kind == "ours" else "h2"
        canonical = kind == "ours" and (ns, n) not in canonical_used and draw(st.booleans())
        if canonical:
            canonical_used.add((ns, n))
        observed.append(
            have(
                n,
                state,
                namespace=ns,
                revision=draw(st.sampled_from(["r1", "r2"])),
                node=node,
                cid=f"c{i}",
                container=f"{ns}_{n}" if canonical else f"{ns}_{n}-{i}",
                **times,
            )
        )
    restarts = {
        key: RestartRecord(
            restart_count=draw(st.integers(0, 5)),
            streak=draw(st.integers(0, 6)),
            failures=(f := draw(st.integers(0, 3))),
            error="boom" if f else None,
            failed_at=NOW - draw(st.integers(0, 400)) if f else None,
        )
        for key in draw(st.lists(st.sampled_from(keys), unique=True))
    }
    return desired, observed, restarts


def apply(observed: list[ObservedContainer], actions) -> list[ObservedContainer]:
    """What an engine would hold after the actions (as the reconciler performs them)."""
    engine = {c.id: c for c in observed}

    def create(replica):
        assert all(c.name != replica.container_name for c in engine.values()), "name taken"
        new_id = f"new{next(_ids)}"
        engine[new_id] = ObservedContainer(
            id=new_id, name=replica.container_name, state=S.RUNNING, labels=replica.labels(NODE)
        )

    for action in actions:
        if isinstance(action, Create):
            create(action.replica)
        elif isinstance(action, Start | Restart):
            engine[action.container.id] = replace(engine[action.container.id], state=S.RUNNING)
        elif isinstance(action, Remove):
            del engine[action.container.id]
        elif isinstance(action, Replace):
            del engine[action.container.id]
            create(action.replica)
    return list(engine.values())


def owned_per_key(containers):
    counts: dict = {}
    for c in containers:
        if c.is_owned_by(NODE):
            counts[c.key] = counts.get(c.key, 0) + 1
    return counts


@settings(max_examples=300, deadline=None)
@given(situations())
def test_one_plan_converges_once_back_offs_have_elapsed(situation):
    desired, observed, restarts = situation
    later = NOW + 10_000  # every back-off and retry has elapsed
    result = plan(desired, observed, later, restarts, node=NODE)
    after = apply(observed, result.actions)

    counts = owned_per_key(after)
    assert {key: 1 for key in (d.key for d in desired)} == counts, "exactly one container per desired replica"
    by_key = {c.key: c for c in after if c.is_owned_by(NODE)}
    for replica in desired:
        container = by_key[replica.key]
        assert container.revision == replica.revision
        if container.state == S.EXITED:  # left alone only when its restart policy says so
            assert not replica.restart_policy.restarts(container)
        else:
            assert container.state in (S.RUNNING, S.PAUSED, S.REMOVING, S.RESTARTING)
    foreign_before = [c for c in observed if not c.is_owned_by(NODE)]
    foreign_after = [c for c in after if not c.is_owned_by(NODE)]
    assert foreign_before == foreign_after, "containers that are not ours are untouched"


@settings(max_examples=300, deadline=None)
@given(situations())
def test_plan_never_duplicates_and_only_touches_its_own(situation):
    desired, observed, restarts = situation
    result = plan(desired, observed, NOW, restarts, node=NODE)
    for action in result.actions:
        if not isinstance(action, Create):
            assert action.container.is_owned_by(NODE)
    before, after = owned_per_key(observed), owned_per_key(apply(observed, result.actions))
    for replica in desired:
        key = replica.key
        # Never a second container; a duplicate that was already there may wait for its retry.
        assert after.get(key, 0) <= max(before.get(key, 0), 1)
        if after.get(key, 0) == 0:  # only while a failed action waits for its retry
            assert restarts[key].retry_due_at() > NOW
    created = [a.replica.key for a in result.actions if isinstance(a, Create | Replace)]
    assert len(created) == len(set(created))
    # Nothing is created for a replica that already has a container.
    assert not [a for a in result.actions if isinstance(a, Create) and a.key in before]
    if result.wake_at is not None:
        assert result.wake_at > NOW


@settings(max_examples=200, deadline=None)
@given(situations())
def test_plan_is_idempotent_once_converged(situation):
    desired, observed, restarts = situation
    later = NOW + 10_000
    after = apply(observed, plan(desired, observed, later, restarts, node=NODE).actions)
    assert plan(desired, after, later, {}, node=NODE).actions == []
