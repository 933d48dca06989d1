"""What a replica should be (from the control plane) and what a container is (from the engine).

These dataclasses are the vocabulary shared by the pure planner (`converge`), the status
builder (`status`), the wire codec (`protocol`) and the runtimes. Nothing here does I/O, so
tests can build any situation by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TypeAlias

# (namespace, replica name). Unique on a node, and the container is named "<namespace>_<name>".
ReplicaKey: TypeAlias = tuple[str, str]

MANAGED_LABEL = "berth.managed"
NODE_LABEL = "berth.node"
NAMESPACE_LABEL = "berth.namespace"
DEPLOYMENT_LABEL = "berth.deployment"
REPLICA_LABEL = "berth.replica"
REVISION_LABEL = "berth.revision"


def container_name(namespace: str, replica: str) -> str:
    """The engine-wide unique name of a replica's container.

    Both parts are DNS labels (no "_"), so the name maps back to exactly one replica, and
    the engine's own name uniqueness is a second guard against duplicates.
    """
    return f"{namespace}_{replica}"


@dataclass(frozen=True)
class PortMapping:
    container: int
    host: int | None  # None: the engine picks a free host port
    protocol: str = "tcp"


@dataclass(frozen=True)
class Resources:
    cpu_millis: int | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class DesiredReplica:
    """One replica the control plane wants on this node (one entry of a `desired` frame)."""

    name: str
    namespace: str
    deployment: str
    revision: str
    image: str
    command: tuple[str, ...] | None = None
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[PortMapping, ...] = ()
    resources: Resources = Resources()

    @property
    def key(self) -> ReplicaKey:
        return (self.namespace, self.name)

    @property
    def container_name(self) -> str:
        return container_name(self.namespace, self.name)

    def labels(self, node: str) -> dict[str, str]:
        """The labels that make the container ours (ownership) and adoptable after a restart."""
        return {
            MANAGED_LABEL: "true",
            NODE_LABEL: node,
            NAMESPACE_LABEL: self.namespace,
            DEPLOYMENT_LABEL: self.deployment,
            REPLICA_LABEL: self.name,
            REVISION_LABEL: self.revision,
        }


class ContainerState(StrEnum):
    """The engine's container states (Docker's `State.Status`)."""

    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    RESTARTING = "restarting"
    REMOVING = "removing"
    EXITED = "exited"
    DEAD = "dead"


# States in which the container's process is not running and its exit code is meaningful.
STOPPED_STATES = frozenset({ContainerState.EXITED, ContainerState.DEAD, ContainerState.REMOVING})


@dataclass(frozen=True)
class ObservedContainer:
    """A container as the engine last described it. Timestamps are Unix seconds (wall clock)."""

    id: str
    name: str
    state: ContainerState
    labels: Mapping[str, str] = field(default_factory=dict)
    image: str = ""
    exit_code: int | None = None
    error: str = ""  # the engine's State.Error, e.g. why a start failed
    oom_killed: bool = False
    started_at: float | None = None
    finished_at: float | None = None

    def is_owned_by(self, node: str) -> bool:
        """Ownership is by labels only: never touch what another node or a human created."""
        return self.labels.get(MANAGED_LABEL) == "true" and self.labels.get(NODE_LABEL) == node

    @property
    def key(self) -> ReplicaKey | None:
        namespace = self.labels.get(NAMESPACE_LABEL)
        replica = self.labels.get(REPLICA_LABEL)
        if not namespace or not replica:
            return None
        return (namespace, replica)

    @property
    def revision(self) -> str | None:
        return self.labels.get(REVISION_LABEL)

    @property
    def is_stopped(self) -> bool:
        return self.state in STOPPED_STATES
