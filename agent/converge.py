"""The pure convergence decision: from desired and observed state to a list of actions.

`plan` reads the whole desired set, every container the engine reported, the restart
history and the probes' verdicts, and returns the actions that move the engine one step
closer (protocol section 3). It does no I/O and keeps no state, so running it again after
any change, or twice, is harmless: the reconciler calls it after every event. Applying the
actions is the reconciler's job (agent/reconciler.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from agent.probes import ContainerProbes
from agent.replicas import (
    DEFAULT_TERMINATION_GRACE,
    ContainerState,
    DesiredReplica,
    Health,
    ObservedContainer,
    ReplicaKey,
    RestartPolicy,
)
from agent.restarts import RestartRecord

_NO_HISTORY = RestartRecord()
_NO_PROBES: Mapping[str, ContainerProbes] = {}


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
class RestartUnhealthy:
    """Stop a running container that failed its liveness check (with its grace), start it again."""

    container: ObservedContainer
    replica: DesiredReplica
    reason: str
    grace: int

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


@dataclass(frozen=True)
class Stop:
    """Stop a running container that failed its liveness check and leave it (restart policy never)."""

    container: ObservedContainer
    replica: DesiredReplica
    reason: str
    grace: int

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


@dataclass(frozen=True)
class Remove:
    """Stop (SIGTERM, `grace` seconds, SIGKILL) and remove a container that is not (or no longer) wanted."""

    container: ObservedContainer
    reason: str
    grace: int = DEFAULT_TERMINATION_GRACE

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
    grace: int = DEFAULT_TERMINATION_GRACE

    @property
    def key(self) -> ReplicaKey:
        return self.replica.key


Action = Create | Start | Restart | RestartUnhealthy | Stop | Remove | Replace
# The actions that stop a running process: readiness goes off before they start.
STOPPING_ACTIONS = (RestartUnhealthy, Stop, Remove, Replace)


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
    probes: Mapping[str, ContainerProbes] = _NO_PROBES,
) -> Plan:
    """Decide what to do so that every desired replica has exactly one running container.

    - a desired replica without a container: Create;
    - a container of a replica that is not desired, or a stray duplicate: Remove;
    - a container of an older revision, or dead: Replace;
    - created but not started: Start; exited: Restart once its back-off has elapsed, if
      its restart policy says so (always; on-failure after a failure; never: left alone);
    - running but failing its liveness probe (`probes`, by container id), or, without a
      liveness probe, marked unhealthy by the image's HEALTHCHECK: RestartUnhealthy
      (first at once, repeated ones on the back-off schedule), or Stop under policy never;
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
        add(Remove(container, "it has no berth.namespace/berth.replica labels", grace_of(container)))

    for key, containers in groups.items():
        replica = wanted.get(key)
        if replica is None:
            for container in containers:
                add(Remove(container, "its replica is not desired on this node", grace_of(container)))
            continue
        keep = canonical_container(key, containers)
        for container in containers:
            if container is not keep:
                add(Remove(container, f"duplicate of {keep.name}", grace_of(container, replica)))
        record = restarts.get(key, _NO_HISTORY)
        _plan_kept(replica, keep, record, probes.get(keep.id), now, add, wakes)

    for key, replica in wanted.items():
        if key not in groups:
            add(Create(replica))

    return Plan(actions=actions, wake_at=min(wakes) if wakes else None)


def grace_of(container: ObservedContainer, replica: DesiredReplica | None = None) -> int:
    """The termination grace to stop a container with: its own (label), else its replica's."""
    grace = container.termination_grace
    if grace is not None:
        return grace
    return replica.termination_grace_seconds if replica is not None else DEFAULT_TERMINATION_GRACE


def restarts_after_exit(replica: DesiredReplica, exited: ObservedContainer, record: RestartRecord) -> bool:
    """Whether an exited container of `replica` is to be started again (after its back-off).

    Its restart policy decides; a container the agent stopped itself because it failed its
    liveness check counts as failed whatever its exit code (a restart in place whose start
    failed is retried under on-failure too).
    """
    if replica.restart_policy.restarts(exited):
        return True
    return record.stopped_for is not None and replica.restart_policy == RestartPolicy.ON_FAILURE


def unhealthy_reason(
    replica: DesiredReplica, container: ObservedContainer, probes: ContainerProbes | None
) -> str | None:
    """Why a running container must be restarted although it runs, or None if it need not.

    Its liveness probe reached its failure threshold in this run; or, when the replica has
    no liveness probe, the image's HEALTHCHECK says unhealthy (as Docker Swarm does).
    """
    if container.state != ContainerState.RUNNING:
        return None
    if replica.liveness_probe is not None:
        current = probes is not None and probes.started_at == container.started_at
        liveness = probes.liveness if current and probes is not None else None
        return liveness.failure_message() if liveness is not None and liveness.failed else None
    if container.health == Health.UNHEALTHY:
        return "the image's HEALTHCHECK reports unhealthy"
    return None


def _plan_kept(
    replica: DesiredReplica,
    container: ObservedContainer,
    record: RestartRecord,
    probes: ContainerProbes | None,
    now: float,
    add: Callable[[Action], None],
    wakes: list[float],
) -> None:
    """The action, if any, for the one container that stands for a desired replica."""
    if container.revision != replica.revision:
        reason = f"revision {container.revision} replaced by {replica.revision}"
        add(Replace(container, replica, reason, grace_of(container, replica)))
    elif container.state == ContainerState.DEAD:
        add(Replace(container, replica, "the engine marked it dead", grace_of(container, replica)))
    elif container.state == ContainerState.CREATED:
        add(Start(container, replica))
    elif container.state == ContainerState.EXITED:
        if not restarts_after_exit(replica, container, record):
            return  # Succeeded or Failed for good, until it is removed or replaced
        due = max(record.restart_due_at(container), record.retry_due_at() or 0.0)
        if due > now:
            wakes.append(due)
        else:
            add(Restart(container, replica))
    elif (reason := unhealthy_reason(replica, container, probes)) is not None:
        grace = grace_of(container, replica)
        if replica.restart_policy == RestartPolicy.NEVER:
            add(Stop(container, replica, reason, grace))
            return
        due = record.unhealthy_restart_due_at(container, now)
        if due > now:
            wakes.append(due)
        else:
            add(RestartUnhealthy(container, replica, reason, grace))
    # running (healthy), paused, restarting, removing: nothing to do until the engine says otherwise
