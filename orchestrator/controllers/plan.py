"""The deployment controller's decision, as a pure function over plain data.

`compute_plan` looks at a deployment's desired replica count and revision and at its
replicas as they are, and says what to change: how many replicas to create, which to
stop, which rows to drop. It does no I/O, so it can be tested exhaustively.
"""

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

# Which replicas go first when there are too many: the least useful ones.
_VICTIM_RANK = {PENDING: 0, UNKNOWN: 1, FAILED: 2, STARTING: 3, SUCCEEDED: 4, RUNNING: 5}


@dataclass(frozen=True)
class ReplicaState:
    name: str
    revision: str
    phase: str
    node_id: int | None
    created_at: datetime


@dataclass
class Plan:
    create: int = 0
    terminate: list[str] = field(default_factory=list)  # on a node: the agent stops them
    delete: list[str] = field(default_factory=list)  # never reached a node: drop the row

    @property
    def is_empty(self) -> bool:
        return not (self.create or self.terminate or self.delete)


def _victim_order(replica: ReplicaState):
    # Unplaced first, then by usefulness, newest first among equals.
    return (replica.node_id is not None, _VICTIM_RANK[replica.phase], -replica.created_at.timestamp())


def compute_plan(desired: int, revision: str, replicas: list[ReplicaState]) -> Plan:
    """What to do so that `desired` replicas of `revision` run.

    Replicas of an older revision are retired only as replicas of the current one are
    Running, so a changed spec never takes the service below `desired` running replicas.
    """
    plan = Plan()
    active = [r for r in replicas if r.phase in ACTIVE]
    current = [r for r in active if r.revision == revision]
    old = [r for r in active if r.revision != revision]

    victims: list[ReplicaState] = []
    if len(current) < desired:
        plan.create = desired - len(current)
    elif len(current) > desired:
        victims.extend(sorted(current, key=_victim_order)[: len(current) - desired])

    victim_names = {v.name for v in victims}
    running_current = sum(1 for r in current if r.phase == RUNNING and r.name not in victim_names)
    keep_old = max(0, min(desired, len(old)) - running_current)
    victims.extend(sorted(old, key=_victim_order)[: len(old) - keep_old])

    for replica in victims:
        (plan.terminate if replica.node_id is not None else plan.delete).append(replica.name)
    # A replica left Terminating without a node (its node was removed) has nobody to stop it.
    plan.delete.extend(r.name for r in replicas if r.phase == TERMINATING and r.node_id is None)
    return plan
