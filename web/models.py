"""API tokens: bearer tokens for the REST API, stored hashed and shown once."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, default="")
    token_hash = models.CharField(max_length=64, unique=True)
    prefix = models.CharField(max_length=24)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.user} {self.prefix}…"

    def is_usable(self, now) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)


class TerminalSession(models.Model):
    """One web terminal opened into a replica: who, which replica, when, how long, how it ended.

    Kept by name (not foreign keys to the replica) so the record outlives the replica."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    username = models.CharField(max_length=150)
    namespace = models.CharField(max_length=63)
    deployment = models.CharField(max_length=63)
    replica = models.CharField(max_length=63)
    node = models.CharField(max_length=63)
    container_id = models.CharField(max_length=80, blank=True, default="")
    command = models.JSONField(default=list)
    client = models.CharField(max_length=100, blank=True, default="")
    started_at = models.DateTimeField(default=timezone.now, db_index=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    end_reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["-started_at"]
        permissions = [("exec_replica", "Can open a terminal in a running replica")]

    def __str__(self) -> str:
        return f"{self.username} → {self.namespace}/{self.replica} at {self.started_at:%Y-%m-%d %H:%M:%S}"

    @property
    def duration_seconds(self) -> float | None:
        if self.ended_at is None:
            return None
        return round((self.ended_at - self.started_at).total_seconds(), 1)
