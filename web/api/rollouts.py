"""Validation of a deployment's health checks and update strategy, and its revisions."""

import re
from collections import Counter

from rest_framework import serializers

from orchestrator.models import Replica, Revision
from web.api.fields import StrictSerializer

_AMOUNT = re.compile(r"^(\d{1,3})%$")


class HttpGetSerializer(StrictSerializer):
    path = serializers.CharField(default="/", max_length=2048)
    port = serializers.IntegerField(min_value=1, max_value=65535)

    def validate_path(self, value):
        if not value.startswith("/") or any(c.isspace() or not c.isprintable() for c in value):
            raise serializers.ValidationError(
                "must start with '/' and contain no spaces or control characters, e.g. '/healthz'"
            )
        return value


class TcpSocketSerializer(StrictSerializer):
    port = serializers.IntegerField(min_value=1, max_value=65535)


class ExecSerializer(StrictSerializer):
    command = serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False), min_length=1, max_length=64
    )

    def validate_command(self, value):
        if not value[0]:
            raise serializers.ValidationError("the first word (the program) must not be empty")
        return value


class ProbeSerializer(StrictSerializer):
    """A readiness or liveness probe (docs/agent-protocol.md): exactly one of http_get,
    tcp_socket or exec, with Kubernetes' timing fields and defaults."""

    http_get = HttpGetSerializer(required=False)
    tcp_socket = TcpSocketSerializer(required=False)
    exec = ExecSerializer(required=False)
    initial_delay_seconds = serializers.IntegerField(min_value=0, max_value=3600, default=0)
    period_seconds = serializers.IntegerField(min_value=1, max_value=3600, default=10)
    timeout_seconds = serializers.IntegerField(min_value=1, max_value=3600, default=1)
    failure_threshold = serializers.IntegerField(min_value=1, max_value=100, default=3)
    success_threshold = serializers.IntegerField(min_value=1, max_value=100, default=1)

    ACTIONS = ("http_get", "tcp_socket", "exec")

    def validate(self, attrs):
        chosen = [name for name in self.ACTIONS if attrs.get(name) is not None]
        if len(chosen) != 1:
            what = "none" if not chosen else " and ".join(chosen)
            raise serializers.ValidationError(
                {"non_field_errors": [f"give exactly one of http_get, tcp_socket, exec (got {what})"]}
            )
        if attrs["timeout_seconds"] > attrs["period_seconds"]:
            raise serializers.ValidationError({"timeout_seconds": ["must not be longer than period_seconds"]})
        action = chosen[0]
        probe = {action: dict(attrs[action])}
        for name in ("initial_delay_seconds", "period_seconds", "timeout_seconds"):
            probe[name] = attrs[name]
        probe["failure_threshold"] = attrs["failure_threshold"]
        probe["success_threshold"] = attrs["success_threshold"]
        return probe


class LivenessProbeSerializer(ProbeSerializer):
    def validate(self, attrs):
        probe = super().validate(attrs)
        if probe["success_threshold"] != 1:
            raise serializers.ValidationError({"success_threshold": ["must be 1 for a liveness probe"]})
        return probe


def _amount(value, where: str):
    """A number of replicas or a percentage string: 1, "25%"."""
    if isinstance(value, bool):
        raise serializers.ValidationError(f"{where} must be a number or a percentage such as '25%'")
    if isinstance(value, int):
        if value < 0:
            raise serializers.ValidationError(f"{where} must not be negative")
        return value
    if isinstance(value, str):
        if value.isdigit():
            return int(value)
        match = _AMOUNT.match(value)
        if match and int(match.group(1)) <= 100:
            return value
    raise serializers.ValidationError(
        f"{where} must be a number or a percentage from 0% to 100%, got {value!r}"
    )


class AmountField(serializers.Field):
    def to_internal_value(self, data):
        return _amount(data, "this")

    def to_representation(self, value):
        return value


def _is_zero(value) -> bool:
    return value == 0 or value == "0%"


class UpdateStrategySerializer(StrictSerializer):
    type = serializers.ChoiceField(choices=["RollingUpdate", "Recreate"], default="RollingUpdate")
    max_surge = AmountField(default="25%", help_text="extra replicas during a rollout: a number or '25%'")
    max_unavailable = AmountField(
        default="25%", help_text="replicas that may be unavailable: a number or '25%'"
    )

    def validate(self, attrs):
        if (
            attrs["type"] == "RollingUpdate"
            and _is_zero(attrs["max_surge"])
            and _is_zero(attrs["max_unavailable"])
        ):
            raise serializers.ValidationError(
                {
                    "max_unavailable": [
                        "max_surge and max_unavailable cannot both be zero: the rollout could never move"
                    ]
                }
            )
        return {
            "type": attrs["type"],
            "max_surge": attrs["max_surge"],
            "max_unavailable": attrs["max_unavailable"],
        }


class RevisionSerializer(serializers.ModelSerializer):
    revision = serializers.IntegerField(source="number")
    current = serializers.SerializerMethodField()
    replicas = serializers.SerializerMethodField()

    class Meta:
        model = Revision
        fields = ["revision", "hash", "current", "replicas", "change_cause", "actor", "created_at", "spec"]
        read_only_fields = fields

    def get_current(self, revision) -> bool:
        return revision.number == revision.deployment.current_revision

    def get_replicas(self, revision) -> int:
        """Active replicas running this revision's template now."""
        return self.context.get("replica_counts", {}).get(revision.hash, 0)


class RollbackSerializer(StrictSerializer):
    revision = serializers.IntegerField(
        min_value=1,
        required=False,
        allow_null=True,
        help_text="the revision to go back to; default the previous",
    )


def revision_rows(deployment) -> list[dict]:
    """The deployment's revisions, newest first, each with how many replicas run it now."""
    counts = Counter(
        deployment.replica_set.filter(phase__in=Replica.ACTIVE).values_list("revision", flat=True)
    )
    revisions = deployment.revisions.select_related("deployment").order_by("-number")
    return RevisionSerializer(revisions, many=True, context={"replica_counts": counts}).data


def strategy_text(deployment) -> str:
    """The update strategy in words, for the dashboard."""
    strategy = deployment.update_strategy or {}
    if strategy.get("type") == "Recreate":
        text = "Recreate: all old replicas stop before new ones start"
    else:
        text = (
            f"Rolling update: up to {strategy.get('max_surge', '25%')} extra, "
            f"{strategy.get('max_unavailable', '25%')} unavailable"
        )
    if deployment.min_ready_seconds:
        text += f"; ready for {deployment.min_ready_seconds} s to count"
    text += f"; deadline {deployment.progress_deadline_seconds} s"
    if deployment.on_failure == "rollback":
        text += ", then roll back"
    return text
