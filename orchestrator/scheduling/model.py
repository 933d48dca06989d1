"""What the scheduler reads: plain dataclasses, built from the database by snapshot.py,
so the decision code (filters, scores, placement) is pure and testable."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

Port = tuple[int, str]  # (host port, protocol)

# Kubernetes' defaults for scoring replicas that request nothing, so they still spread by load.
DEFAULT_SCORE_CPU = 100  # millicores
DEFAULT_SCORE_MEMORY = 200 * 2**20  # bytes


@dataclass(frozen=True)
class Expression:
    """A node label requirement: `key` `operator` (In, NotIn, Exists, DoesNotExist) `values`."""

    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        if self.operator == "DoesNotExist":
            return not present
        raise ValueError(f"unknown operator {self.operator!r}")


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str  # NoSchedule, PreferNoSchedule, NoExecute

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True)
class Toleration:
    key: str = ""  # empty with Exists: every taint
    operator: str = "Equal"  # Equal, Exists
    value: str = ""
    effect: str = ""  # empty: every effect
    seconds: int | None = None  # NoExecute: how long to stay once the taint appears

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class SpreadConstraint:
    topology_key: str
    max_skew: int = 1
    hard: bool = True  # DoNotSchedule; False: ScheduleAnyway


@dataclass(frozen=True)
class PlacementSpec:
    """Everything about a deployment that placement reads; all its replicas share it."""

    deployment_id: int
    cpu: int = 0  # requested millicores
    memory: int = 0  # requested bytes
    image: str = ""
    host_ports: frozenset[Port] = frozenset()
    strategy: str = "spread"  # or binpack
    node_selector: tuple[tuple[str, str], ...] = ()
    required: tuple[Expression, ...] = ()
    preferred: tuple[tuple[int, Expression], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    topology_spread: tuple[SpreadConstraint, ...] = ()
    max_per_node: int | None = None

    def tolerates(self, taint: Taint) -> bool:
        return any(t.tolerates(taint) for t in self.tolerations)

    @property
    def score_cpu(self) -> int:
        return self.cpu or DEFAULT_SCORE_CPU

    @property
    def score_memory(self) -> int:
        return self.memory or DEFAULT_SCORE_MEMORY


@dataclass
class NodeInfo:
    """A node as placement sees it, with what is already placed on it."""

    id: int
    name: str
    ready: bool = True
    unschedulable: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    allocatable_cpu: int = 0
    allocatable_memory: int = 0
    requested_cpu: int = 0
    requested_memory: int = 0
    score_cpu: int = 0  # requested, counting request-less replicas at the scoring defaults
    score_memory: int = 0
    host_ports: set[Port] = field(default_factory=set)
    deployment_counts: Counter = field(default_factory=Counter)
    images: frozenset[str] = frozenset()
    resource_version: int = 0
    # group(), computed once: a NodeInfo's status, labels and taints are not changed after
    # it is built (a changed node is read again into a new one).
    _group: int | None = field(default=None, repr=False, compare=False)

    def group(self) -> int:
        """A small number for what static filters and label scores read (status, labels,
        taints): nodes that share it share their verdicts."""
        if self._group is None:
            key = (self.ready, self.unschedulable, tuple(sorted(self.labels.items())), self.taints)
            self._group = _GROUPS.setdefault(key, len(_GROUPS))
        return self._group

    def add(self, spec: PlacementSpec) -> None:
        """Account for one more replica of `spec` on this node."""
        self.requested_cpu += spec.cpu
        self.requested_memory += spec.memory
        self.score_cpu += spec.score_cpu
        self.score_memory += spec.score_memory
        self.host_ports |= spec.host_ports
        self.deployment_counts[spec.deployment_id] += 1


# Every group seen by this process, numbered. Bounded by the distinct label and taint sets
# a fleet has had, which is small next to the nodes that share them.
_GROUPS: dict[tuple, int] = {}
