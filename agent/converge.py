"""The pure convergence decision: from desired and observed state to a list of actions.

`plan` reads the whole desired set, every container the engine reported and the restart
history, and returns the actions that move the engine one step closer (protocol section 3).
It does no I/O and keeps no state, so running it again after any change, or twice, is
harmless: the reconciler calls it after every event. Applying the actions is the
reconciler's job (agent/reconciler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.replicas import ContainerState, DesiredReplica, ObservedContainer, ReplicaKey
from agent.restarts import RestartRecord

_NO_HISTORY = RestartRecord()


@dataclass(frozen=True)
class Create:
    """Pull the image if missing, create the container, start it."""

    replica: DesiredReplica

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


@dataclass(frozen=True)
class Start:
    """Start a container that was created but never started (e.g. the agent died in between)."""

    container: ObservedContainer
    replica: DesiredReplica

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


@dataclass(frozen=True)
class Restart:
    """Start an exited container of a desired replica again, its back-off having elapsed."""

    container: ObservedContainer
    replica: DesiredReplica

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


@dataclass(frozen=True)
class Remove:
    """Stop (10 s grace) and remove a container that is not (or no longer) wanted."""

    container: ObservedContainer
    reason: str

    @property
    def key(self) -> ReplicaKey:
        # A container without replica labels still needs a key to serialise work on it.
        return self.container.key or ("", self.container.id)


@dataclass(frozen=True)
class Replace:
    """Remove a container that no longer matches its replica (other revision, dead), then create."""

    container: ObservedContainer
    replica: DesiredReplica
    reason: str

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


Action = Create | Start | Restart | Remove | Replace


@dataclass(frozen=True)
class Plan:
    """The actions to take now, and when to plan again if nothing else happens first."""

    actions: list[Action]
    wake_at: float | None = None


def canonical_container(key: ReplicaKey, containers: Sequence[ObservedContainer]) -> ObservedContainer:
    """The container that stands for a replica when several carry its labels.

    The engine-unique name wins (it is the one the agent creates), then a running one,
    then the most recently started; the others are strays to remove.
    """
    expected_name = f"{key[0]}_{key[1]}"
    return max(
        containers,
        key=lambda c: (
            c.name == expected_name,
            c.state == ContainerState.RUNNING,
            c.started_at or 0.0,
            c.id,
        ),
    )


def owned_by_replica(
    observed: Iterable[ObservedContainer], node: str
) -> tuple[dict[ReplicaKey, list[ObservedContainer]], list[ObservedContainer]]:
    """Group this node's containers by replica; also return owned ones without replica labels."""
    groups: dict[ReplicaKey, list[ObservedContainer]] = {}
    unlabelled: list[ObservedContainer] = []
    for container in observed:
        if not container.is_owned_by(node):
            continue  # another node's or a human's container: never ours to touch
        key = container.key
        if key is None:
            unlabelled.append(container)
        else:
            groups.setdefault(key, []).append(container)
    return groups, unlabelled


def plan(
    desired: Iterable[DesiredReplica],
    observed: Iterable[ObservedContainer],
    now: float,
    restarts: Mapping[ReplicaKey, RestartRecord],
    *,
    node: str,
) -> Plan:
    """Decide what to do so that every desired replica has exactly one running container.

    - a desired replica without a container: Create;
    - a container of a replica that is not desired, or a stray duplicate: Remove;
    - a container of an older revision, or dead: Replace;
    - created but not started: Start; exited: Restart once its back-off has elapsed;
    - a key whose last action failed waits for its retry time.
    Containers not owned by `node` are ignored entirely.
    """
    wanted = {replica.key: replica for replica in desired}
    groups, unlabelled = owned_by_replica(observed, node)
    actions: list[Action] = []
    wakes: list[float] = []

    def add(action: Action) -> None:
        due = restarts.get(action.key, _NO_HISTORY).retry_due_at()
        if due is not None and due > now:
            wakes.append(due)
        else:
            actions.append(action)

    for container in unlabelled:
        add(Remove(container, "it has no berth.namespace/berth.replica labels"))

    for key, containers in groups.items():
        replica = wanted.get(key)
        if replica is None:
            for container in containers:
                add(Remove(container, "its replica is not desired on this node"))
            continue
        keep = canonical_container(key, containers)
        for container in containers:
            if container is not keep:
                add(Remove(container, f"duplicate of {keep.name}"))
        _plan_kept(replica, keep, restarts.get(key, _NO_HISTORY), now, add, wakes)

    for key, replica in wanted.items():
        if key not in groups:
            add(Create(replica))

    return Plan(actions=actions, wake_at=min(wakes) if wakes else None)


def _plan_kept(
    replica: DesiredReplica,
    container: ObservedContainer,
    record: RestartRecord,
    now: float,
    add: Callable[[Action], None],
    wakes: list[float],
) -> None:
    """The action, if any, for the one container that stands for a desired replica."""
    if container.revision != replica.revision:
        add(Replace(container, replica, f"revision {container.revision} replaced by {replica.revision}"))
    elif container.state == ContainerState.DEAD:
        add(Replace(container, replica, "the engine marked it dead"))
    elif container.state == ContainerState.CREATED:
        add(Start(container, replica))
    elif container.state == ContainerState.EXITED:
        due = max(record.restart_due_at(container), record.retry_due_at() or 0.0)
        if due > now:
            wakes.append(due)
        else:
            add(Restart(container, replica))
    # running, paused, restarting, removing: nothing to do until the engine says otherwise
