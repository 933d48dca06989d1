"""Namespaces, deployments, replicas and events.

Users write a deployment's *spec*; controllers and agents write *status*. A replica
records the spec it runs (its template and revision), so later rollouts can compare.
"""

import hashlib
import json
import uuid

from django.db import models
from django.db.models import Q
from django.utils import timezone

from orchestrator.names import validate_dns_label


class Namespace(models.Model):
    DEFAULT = "default"

    name = models.CharField(max_length=63, unique=True, validators=[validate_dns_label])
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def default_update_strategy() -> dict:
    return {"type": "RollingUpdate", "max_surge": "25%", "max_unavailable": "25%"}


_TEMPLATE_DEFAULTS = {
    "restart_policy": "always",
    "termination_grace_seconds": 10,
    "readiness_probe": None,
    "liveness_probe": None,
}


def template_hash(template: dict) -> str:
    encoded = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


class LiveDeploymentManager(models.Manager):
    """Deployments a user can see: those not being deleted."""

    def get_queryset(self):
        return super().get_queryset().filter(deleted_at__isnull=True)


class Deployment(models.Model):
    class Condition(models.TextChoices):
        AVAILABLE = "Available"
        PROGRESSING = "Progressing"
        REPLICA_FAILURE = "ReplicaFailure"

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    namespace = models.ForeignKey(Namespace, on_delete=models.PROTECT, related_name="deployments")
    name = models.CharField(max_length=63, validators=[validate_dns_label])

    # --- spec (written by users through services) ---
    image = models.CharField(max_length=512)
    command = models.JSONField(null=True, blank=True)  # list of strings, or None for the image's own
    env = models.JSONField(default=dict, blank=True)
    ports = models.JSONField(default=list, blank=True)  # [{"container", "host", "protocol"}]
    cpu_request = models.PositiveIntegerField(null=True, blank=True)  # millicores
    memory_request = models.PositiveBigIntegerField(null=True, blank=True)  # bytes
    replicas = models.PositiveIntegerField(default=1)
    # Placement (see orchestrator/scheduling/): none of it is part of a replica's template,
    # so changing it moves no running replica (as in Kubernetes, until they are replaced).
    strategy = models.CharField(max_length=16, default="spread")  # spread | binpack
    node_selector = models.JSONField(default=dict, blank=True)
    affinity = models.JSONField(default=dict, blank=True)  # {"required": [...], "preferred": [...]}
    tolerations = models.JSONField(default=list, blank=True)
    topology_spread = models.JSONField(default=list, blank=True)
    max_per_node = models.PositiveIntegerField(null=True, blank=True)
    # Health and lifecycle (part of the template: changing them rolls the replicas).
    restart_policy = models.CharField(max_length=16, default="always")  # always | on-failure | never
    termination_grace_seconds = models.PositiveIntegerField(default=10)
    readiness_probe = models.JSONField(null=True, blank=True)
    liveness_probe = models.JSONField(null=True, blank=True)
    # Rollouts (see orchestrator/controllers/rollout.py).
    update_strategy = models.JSONField(default=default_update_strategy, blank=True)
    min_ready_seconds = models.PositiveIntegerField(default=0)
    progress_deadline_seconds = models.PositiveIntegerField(default=600)
    paused = models.BooleanField(default=False)
    on_failure = models.CharField(max_length=16, default="none")  # none | rollback
    # How long replicas on a node that stopped reporting wait before they are replaced.
    node_loss_toleration_seconds = models.PositiveIntegerField(default=5)
    generation = models.PositiveBigIntegerField(default=1)

    # --- status (written by the deployment controller) ---
    observed_generation = models.PositiveBigIntegerField(default=0)
    status_replicas = models.PositiveIntegerField(default=0)
    ready_replicas = models.PositiveIntegerField(default=0)
    available_replicas = models.PositiveIntegerField(default=0)
    updated_replicas = models.PositiveIntegerField(default=0)
    conditions = models.JSONField(default=list, blank=True)
    current_revision = models.PositiveIntegerField(default=0)  # Revision.number of the template
    complete_revision = models.PositiveIntegerField(default=0)  # the last one fully rolled out
    # The rollout's last visible step and when it happened, for progress_deadline_seconds.
    progress_mark = models.CharField(max_length=200, blank=True, default="")
    progress_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    deleted_at = models.DateTimeField(null=True, blank=True)  # set: scaling to zero, then removed

    objects = models.Manager()
    live = LiveDeploymentManager()

    class Meta:
        ordering = ["namespace__name", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["namespace", "name"],
                condition=Q(deleted_at__isnull=True),
                name="deployment_name_unique_in_namespace",
            )
        ]

    def __str__(self) -> str:
        return f"{self.namespace.name}/{self.name}"

    # Spec fields that make up the template: changing any of them creates a revision.
    TEMPLATE_FIELDS = (
        "image",
        "command",
        "env",
        "ports",
        "cpu_request",
        "memory_request",
        "restart_policy",
        "termination_grace_seconds",
        "readiness_probe",
        "liveness_probe",
    )

    def template(self) -> dict:
        """What each replica runs: the part of the spec that a replica records."""
        template = {
            "image": self.image,
            "command": self.command,
            "env": self.env,
            "ports": self.ports,
            "resources": {"cpu_millis": self.cpu_request, "memory_bytes": self.memory_request},
        }
        # Health and lifecycle settings join the template only when they differ from the
        # defaults, so replicas created before they existed keep their revision hash.
        for field, default in _TEMPLATE_DEFAULTS.items():
            value = getattr(self, field)
            if value != default:
                template[field] = value
        return template

    def revision(self) -> str:
        """A stable hash of the template: replicas of the same revision run the same thing."""
        return template_hash(self.template())

    def template_spec(self) -> dict:
        """The template as spec fields (what a Revision stores and a rollback restores)."""
        return {field: getattr(self, field) for field in self.TEMPLATE_FIELDS}

    @property
    def is_deleting(self) -> bool:
        return self.deleted_at is not None

    def condition(self, type_: str) -> dict | None:
        return next((c for c in self.conditions if c["type"] == type_), None)

    def set_condition(self, type_: str, status: bool | None, reason: str, message: str, now) -> None:
        """Record a condition (None: Unknown); its transition time moves only when its status changes."""
        value = "Unknown" if status is None else ("True" if status else "False")
        for condition in self.conditions:
            if condition["type"] == type_:
                if condition["status"] != value:
                    condition["last_transition_time"] = now.isoformat()
                condition.update(status=value, reason=reason, message=message)
                return
        self.conditions.append(
            {
                "type": type_,
                "status": value,
                "reason": reason,
                "message": message,
                "last_transition_time": now.isoformat(),
            }
        )


class Revision(models.Model):
    """One immutable version of a deployment's template, numbered from 1.

    Every change to what replicas run appends one; a rollback appends a copy of the
    older one (as `kubectl rollout undo` does), so the history reads in order.
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="revisions")
    number = models.PositiveIntegerField()
    hash = models.CharField(max_length=32)
    spec = models.JSONField()  # the TEMPLATE_FIELDS values
    change_cause = models.CharField(max_length=200, blank=True, default="")
    actor = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    HISTORY_LIMIT = 10  # older revisions are pruned, the current one never

    class Meta:
        ordering = ["deployment", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "number"], name="revision_number_unique")
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name} revision {self.number}"


class Replica(models.Model):
    class Phase(models.TextChoices):
        PENDING = "Pending"  # not on a node yet, or on one that has not started it yet
        STARTING = "Starting"  # the agent is pulling, creating or starting it
        RUNNING = "Running"
        FAILED = "Failed"  # exited non-zero or could not start; the agent retries with back-off
        SUCCEEDED = "Succeeded"  # exited 0
        TERMINATING = "Terminating"  # leaving: its node will stop and remove it
        UNKNOWN = "Unknown"  # its node stopped reporting

    # Phases in which a replica counts towards the deployment's replicas.
    ACTIVE = (Phase.PENDING, Phase.STARTING, Phase.RUNNING, Phase.FAILED, Phase.SUCCEEDED, Phase.UNKNOWN)
    # Phases an agent may report.
    REPORTABLE = (Phase.STARTING, Phase.RUNNING, Phase.FAILED, Phase.SUCCEEDED)

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    namespace = models.ForeignKey(Namespace, on_delete=models.PROTECT, related_name="replicas")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="replica_set")
    name = models.CharField(max_length=63)
    node = models.ForeignKey(
        "nodes.Node", null=True, blank=True, on_delete=models.SET_NULL, related_name="replicas"
    )
    phase = models.CharField(max_length=16, choices=Phase.choices, default=Phase.PENDING)
    message = models.TextField(blank=True, default="")
    container_id = models.CharField(max_length=80, blank=True, default="")
    exit_code = models.IntegerField(null=True, blank=True)
    last_exit_code = models.IntegerField(null=True, blank=True)  # kept after a restart
    restart_count = models.PositiveIntegerField(default=0)
    # Readiness as the agent's probes (or the image's HEALTHCHECK) see it.
    ready = models.BooleanField(default=False)
    ready_since = models.DateTimeField(null=True, blank=True)
    health = models.CharField(max_length=16, blank=True, default="")  # Docker HEALTHCHECK state

    # The spec this replica runs, fixed at creation.
    revision = models.CharField(max_length=32)
    template = models.JSONField()
    # Copied from the template so the scheduler can add up a node's usage in SQL.
    cpu_request = models.PositiveIntegerField(default=0)  # millicores
    memory_request = models.PositiveBigIntegerField(default=0)  # bytes
    host_ports = models.JSONField(default=list, blank=True)  # [[port, protocol], ...]

    created_at = models.DateTimeField(default=timezone.now)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    # The generation of the first desired frame of its node that carried this replica in
    # full (orchestrator.dispatch): an agent that applied that generation has its entry.
    sent_generation = models.PositiveBigIntegerField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "name"]
        constraints = [
            models.UniqueConstraint(fields=["namespace", "name"], name="replica_name_unique_in_namespace")
        ]
        # No index holds `phase` (nor any other column agents report), so applying their
        # reports can update rows in place (PostgreSQL's HOT updates, with the room the
        # table's fillfactor leaves on each page: migrations 0009, 0010); replicas of a node are
        # found through the node's foreign-key index. Replicas waiting for a node are few:
        # a partial index finds them.
        indexes = [
            models.Index(fields=["deployment"], condition=Q(node__isnull=True), name="replica_unplaced")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_active(self) -> bool:
        return self.phase in self.ACTIVE

    @property
    def is_ready(self) -> bool:
        return self.phase == self.Phase.RUNNING and self.ready

    def is_available(self, now, min_ready_seconds: int) -> bool:
        """Ready, and for at least `min_ready_seconds` (what rollouts and status count)."""
        if not self.is_ready:
            return False
        if min_ready_seconds <= 0:
            return True
        return self.ready_since is not None and (now - self.ready_since).total_seconds() >= min_ready_seconds

    def desired_entry(self) -> dict:
        """This replica as its node's agent receives it (see docs/agent-protocol.md)."""
        names = (self.name, self.namespace.name, self.deployment.name)
        return desired_entry(*names, self.revision, self.template)


def desired_entry(name: str, namespace: str, deployment: str, revision: str, template: dict) -> dict:
    """A replica as its node's agent receives it, from plain values (dispatch reads many)."""
    return {"name": name, "namespace": namespace, "deployment": deployment, "revision": revision, **template}


class Event(models.Model):
    """Something that happened to an object, for people (kubectl get events)."""

    class Type(models.TextChoices):
        NORMAL = "Normal"
        WARNING = "Warning"

    kind = models.CharField(max_length=32)  # Deployment, Replica, Node
    namespace = models.ForeignKey(Namespace, null=True, blank=True, on_delete=models.CASCADE)
    name = models.CharField(max_length=63)
    object_uid = models.UUIDField(null=True, blank=True, db_index=True)
    type = models.CharField(max_length=8, choices=Type.choices, default=Type.NORMAL)
    reason = models.CharField(max_length=64)
    message = models.TextField()
    count = models.PositiveIntegerField(default=1)
    first_seen = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=150, blank=True, default="")

    class Meta:
        ordering = ["-last_seen"]
        indexes = [models.Index(fields=["kind", "object_uid", "reason"])]

    def __str__(self) -> str:
        return f"{self.type} {self.reason} {self.kind}/{self.name}: {self.message}"
