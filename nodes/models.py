"""Nodes (servers running an agent) and the join tokens that enroll them.

Join tokens and node credentials are stored only as SHA-256 hashes: they are long
random secrets, so a fast hash is enough and a leaked database reveals none of them.
"""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from orchestrator.names import validate_dns_label


class Node(models.Model):
    class Status(models.TextChoices):
        READY = "Ready"
        NOT_READY = "NotReady"

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=63, unique=True, validators=[validate_dns_label])
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.NOT_READY)
    status_reason = models.CharField(max_length=64, blank=True, default="")
    status_message = models.TextField(blank=True, default="")
    status_changed_at = models.DateTimeField(default=timezone.now)

    agent_labels = models.JSONField(default=dict, blank=True)  # reported by the agent (--labels)
    user_labels = models.JSONField(default=dict, blank=True)  # set through the API; win on conflict
    unschedulable = models.BooleanField(default=False)  # cordoned
    # Set by a drain: the node is cordoned and its replicas move away as a rollout would
    # move them (honouring max_unavailable); cleared by uncordon.
    drain_started_at = models.DateTimeField(null=True, blank=True)
    taints = models.JSONField(default=list, blank=True)  # [{"key", "value", "effect"}]
    images = models.JSONField(default=list, blank=True)  # image references the engine has (agent hello)

    capacity_cpu = models.PositiveIntegerField(default=0)  # millicores
    capacity_memory = models.PositiveBigIntegerField(default=0)  # bytes
    reserved_cpu = models.PositiveIntegerField(default=0)  # kept back for the system
    reserved_memory = models.PositiveBigIntegerField(default=0)
    engine_version = models.CharField(max_length=64, blank=True, default="")
    agent_version = models.CharField(max_length=64, blank=True, default="")
    address = models.CharField(max_length=255, blank=True, default="")

    credential_hash = models.CharField(max_length=64, unique=True, null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    session = models.UUIDField(null=True, blank=True)  # the agent connection that is current
    # Bumped by every placement onto this node and every change to what placement reads
    # (labels, taints, cordon, reserved room): schedulers commit only against the version
    # they read, so two of them can never both fill the same room.
    resource_version = models.PositiveBigIntegerField(default=0)
    generation = models.PositiveBigIntegerField(default=0)  # of the desired set last sent
    observed_generation = models.PositiveBigIntegerField(default=0)  # applied by the agent

    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def channel_group(self) -> str:
        return f"node.{self.pk}"

    @property
    def labels(self) -> dict:
        return {**self.agent_labels, **self.user_labels}

    @property
    def allocatable_cpu(self) -> int:
        return max(self.capacity_cpu - self.reserved_cpu, 0)

    @property
    def allocatable_memory(self) -> int:
        return max(self.capacity_memory - self.reserved_memory, 0)

    @property
    def is_ready(self) -> bool:
        return self.status == self.Status.READY

    def mark_ready(self, now) -> bool:
        """Ready again; True when this is a transition."""
        changed = self.status != self.Status.READY
        self.status = self.Status.READY
        self.status_reason, self.status_message = "AgentReady", "the agent is connected and reporting"
        if changed:
            self.status_changed_at = now
        return changed

    def mark_not_ready(self, now, reason: str, message: str) -> bool:
        """NotReady; True when this is a transition."""
        changed = self.status != self.Status.NOT_READY
        self.status = self.Status.NOT_READY
        self.status_reason, self.status_message = reason, message
        if changed:
            self.status_changed_at = now
        return changed


class JoinToken(models.Model):
    """A secret that lets an agent enroll its server as a node (kubeadm's bootstrap token)."""

    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=24)  # the first characters, to tell tokens apart
    description = models.CharField(max_length=200, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    use_count = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}…"

    def is_usable(self, now) -> bool:
        return self.revoked_at is None and self.expires_at > now
