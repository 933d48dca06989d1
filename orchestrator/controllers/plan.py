"""The deployment controller's decision, as a pure function over plain data.

`compute_plan` looks at a deployment's desired replica count, its current revision, its
update strategy and its replicas as they are, and says what to change: how many replicas
to create (and of which revision), which to stop, which rows to drop. It does no I/O, so
it can be tested exhaustively (tests/unit/test_plan.py, tests/unit/test_rollout.py).

A rolling update works as Kubernetes' deployment controller does, one replica at a time
instead of one ReplicaSet at a time: new replicas are created while the total stays within
`desired + max_surge`, and old ones are stopped while the available replicas stay at least
`desired - max_unavailable`. Replicas on a draining node count as old, so a drain moves
them the same careful way.
"""

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

PENDING, STARTING, RUNNING, FAILED, SUCCEEDED, TERMINATING, UNKNOWN = (
    "Pending",
    "Starting",
    "Running",
    "Failed",
    "Succeeded",
    "Terminating",
    "Unknown",
)
ACTIVE = frozenset({PENDING, STARTING, RUNNING, FAILED, SUCCEEDED, UNKNOWN})

ROLLING_UPDATE, RECREATE = "RollingUpdate", "Recreate"

# Which replicas go first when there are too many: the least useful ones.
_VICTIM_RANK = {PENDING: 0, UNKNOWN: 1, FAILED: 2, STARTING: 3, SUCCEEDED: 4, RUNNING: 5}
_PERCENT = re.compile(r"^(\d{1,3})%$")


@dataclass(frozen=True)
class ReplicaState:
    name: str
    revision: str
    phase: str
    node_id: int | None
    created_at: datetime
    available: bool = False  # ready for at least min_ready_seconds
    draining: bool = False  # its node is being drained: it must move
    lost: bool = False  # its node is not reporting: nothing will confirm it stopped


@dataclass(frozen=True)
class Rollout:
    """The update strategy, resolved against the desired replica count."""

    type: str = ROLLING_UPDATE
    max_surge: int = 1
    max_unavailable: int = 0
    paused: bool = False


@dataclass
class Plan:
    create: int = 0
    create_revision: str | None = None  # None: the current revision
    terminate: list[str] = field(default_factory=list)  # on a node: the agent stops them
    delete: list[str] = field(default_factory=list)  # never reached a node: drop the row

    @property
    def is_empty(self) -> bool:
        return not (self.create or self.terminate or self.delete)


def resolve_amount(value: int | str, desired: int, *, round_up: bool) -> int:
    """An absolute number, or a percentage of `desired` (surge rounds up, unavailable down)."""
    if isinstance(value, int):
        return value
    match = _PERCENT.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is neither a number nor a percentage such as '25%'")
    scaled = desired * int(match.group(1)) / 100
    return math.ceil(scaled) if round_up else math.floor(scaled)


def resolve_rollout(update_strategy: dict, desired: int, paused: bool = False) -> Rollout:
    """The Rollout for a deployment's `update_strategy` (validated by the API)."""
    kind = update_strategy.get("type", ROLLING_UPDATE)
    if kind == RECREATE:
        return Rollout(type=RECREATE, max_surge=0, max_unavailable=desired, paused=paused)
    surge = resolve_amount(update_strategy.get("max_surge", "25%"), desired, round_up=True)
    unavailable = resolve_amount(update_strategy.get("max_unavailable", "25%"), desired, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # as Kubernetes: both rounding to zero would never make progress
    return Rollout(type=ROLLING_UPDATE, max_surge=surge, max_unavailable=unavailable, paused=paused)


def _victim_order(replica: ReplicaState):
    # Unplaced first, then unavailable before available, then by usefulness, newest first.
    return (
        replica.node_id is not None,
        replica.available,
        _VICTIM_RANK[replica.phase],
        -replica.created_at.timestamp(),
    )


def compute_plan(
    desired: int, revision: str, replicas: list[ReplicaState], rollout: Rollout | None = None
) -> Plan:
    """What to do so that `desired` available replicas of `revision` run."""
    rollout = rollout or Rollout()
    plan = Plan()
    active = [r for r in replicas if r.phase in ACTIVE]
    current = [r for r in active if r.revision == revision and not r.draining]
    old = [r for r in active if r.revision != revision or r.draining]

    if rollout.paused:
        victims = _plan_paused(plan, desired, revision, current, old)
    elif rollout.type == RECREATE:
        victims = _plan_recreate(plan, desired, revision, current, old, replicas)
    else:
        victims = _plan_rolling(plan, desired, current, old, rollout)

    for replica in victims:
        (plan.terminate if replica.node_id is not None else plan.delete).append(replica.name)
    # A replica left Terminating without a node (its node was removed) has nobody to stop it.
    plan.delete.extend(r.name for r in replicas if r.phase == TERMINATING and r.node_id is None)
    return plan


def _plan_rolling(plan: Plan, desired: int, current, old, rollout: Rollout) -> list[ReplicaState]:
    victims: list[ReplicaState] = []
    if len(current) > desired:
        excess = sorted(current, key=_victim_order)[: len(current) - desired]
        victims.extend(excess)
        current = [r for r in current if r not in excess]
    total = len(current) + len(old)
    if len(current) < desired:
        plan.create = max(0, min(desired - len(current), desired + rollout.max_surge - total))
    if not old:
        return victims
    # Stop old replicas only while enough stay available: the new ones just created are
    # not available yet, and every unavailable new replica uses up some of the allowance.
    total += plan.create
    min_available = desired - rollout.max_unavailable
    available_current = sum(1 for r in current if r.available)
    new_unavailable = len(current) + plan.create - available_current
    budget = total - min_available - new_unavailable
    ordered = sorted(old, key=_victim_order)
    # The ones serving nobody first: removing them costs no availability.
    for replica in ordered:
        if budget <= 0:
            break
        if not replica.available:
            victims.append(replica)
            budget -= 1
    available_total = available_current + sum(1 for r in old if r.available)
    can_stop = min(budget, available_total - min_available)
    for replica in ordered:
        if can_stop <= 0:
            break
        if replica.available:
            victims.append(replica)
            can_stop -= 1
    # Beyond desired + max_surge (the user scaled down mid-rollout): old ones go regardless.
    over = total - len(victims) - (desired + rollout.max_surge)
    for replica in ordered:
        if over <= 0:
            break
        if replica not in victims:
            victims.append(replica)
            over -= 1
    # The old ones stopping now free room under the surge at once: use it in this pass,
    # rather than one report round-trip later (creating never lowers availability).
    stopping_old = sum(1 for r in victims if r in old)
    room = desired + rollout.max_surge - (len(current) + len(old) - stopping_old)
    plan.create = max(plan.create, min(desired - len(current), room))
    return victims


def _plan_recreate(plan: Plan, desired: int, revision: str, current, old, replicas) -> list[ReplicaState]:
    """All old replicas stop first; new ones start only once none of them still runs."""
    if old:
        return list(old)
    still_stopping = any(
        r.phase == TERMINATING and r.revision != revision and r.node_id is not None and not r.lost
        for r in replicas
    )
    if still_stopping:
        return []
    if len(current) < desired:
        plan.create = desired - len(current)
        return []
    return sorted(current, key=_victim_order)[: len(current) - desired]


def _plan_paused(plan: Plan, desired: int, revision: str, current, old) -> list[ReplicaState]:
    """A paused rollout only scales: new replicas copy the revision most old ones run."""
    total = len(current) + len(old)
    if total < desired:
        plan.create = desired - total
        if old:
            plan.create_revision = Counter(r.revision for r in old).most_common(1)[0][0]
        return []
    return sorted([*old, *current], key=_victim_order)[: total - desired]
