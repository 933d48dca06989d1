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

from agent.probes import Probe

# (namespace, replica name). Unique on a node, and the container is named "<namespace>_<name>".
ReplicaKey: TypeAlias = tuple[str, str]

MANAGED_LABEL = "berth.managed"
NODE_LABEL = "berth.node"
NAMESPACE_LABEL = "berth.namespace"
DEPLOYMENT_LABEL = "berth.deployment"
REPLICA_LABEL = "berth.replica"
REVISION_LABEL = "berth.revision"
# The termination grace the container was created with: a container whose replica is no
# longer desired is still stopped with its own grace (and adopted ones keep theirs).
GRACE_LABEL = "berth.termination-grace"

DEFAULT_TERMINATION_GRACE = 10
MAX_TERMINATION_GRACE = 3600


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


class RestartPolicy(StrEnum):
    """When an exited container is started again (protocol section 2, `restart_policy`)."""

    ALWAYS = "always"  # whatever its exit code
    ON_FAILURE = "on-failure"  # only after a failure (exit code != 0, OOM kill, start error)
    NEVER = "never"

    def restarts(self, exited: ObservedContainer) -> bool:
        if self == RestartPolicy.ALWAYS:
            return True
        return self == RestartPolicy.ON_FAILURE and exited.failed


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
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    termination_grace_seconds: int = DEFAULT_TERMINATION_GRACE
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None

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
            GRACE_LABEL: str(self.termination_grace_seconds),
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


class Health(StrEnum):
    """The engine's verdict from the image's HEALTHCHECK (Docker's `State.Health.Status`)."""

    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


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
    health: Health | None = None  # None: the image has no HEALTHCHECK

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

    @property
    def failed(self) -> bool:
        """A stopped container's process failed: non-zero exit, killed for memory, or never started."""
        return self.oom_killed or bool(self.error) or self.exit_code != 0

    @property
    def termination_grace(self) -> int | None:
        """The grace it was created with (its label), or None if unknown."""
        try:
            grace = int(self.labels.get(GRACE_LABEL, ""))
        except ValueError:
            return None
        return grace if 0 <= grace <= MAX_TERMINATION_GRACE else None
