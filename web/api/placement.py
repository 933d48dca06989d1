"""Validation of a deployment's placement fields (docs/scheduling.md)."""

from rest_framework import serializers

from nodes.labels import TAINT_EFFECTS, label_key_error, label_value_error
from web.api.fields import StrictSerializer

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _check_key(value: str) -> str:
    reason = label_key_error(value)
    if reason:
        raise serializers.ValidationError(reason)
    return value


class ExpressionSerializer(StrictSerializer):
    key = serializers.CharField(validators=[_check_key])
    operator = serializers.ChoiceField(choices=OPERATORS)
    values = serializers.ListField(
        child=serializers.CharField(allow_blank=True), required=False, default=list
    )

    def validate(self, attrs):
        values, operator = attrs.get("values", []), attrs["operator"]
        if operator in ("In", "NotIn") and not values:
            raise serializers.ValidationError({"values": [f"{operator} needs at least one value"]})
        if operator in ("Exists", "DoesNotExist") and values:
            raise serializers.ValidationError({"values": [f"{operator} takes no values"]})
        for value in values:
            reason = label_value_error(value)
            if reason:
                raise serializers.ValidationError({"values": [reason]})
        return {"key": attrs["key"], "operator": operator, "values": values}


class PreferredSerializer(StrictSerializer):
    weight = serializers.IntegerField(min_value=1, max_value=100)
    match = ExpressionSerializer()


class AffinitySerializer(StrictSerializer):
    required = ExpressionSerializer(many=True, required=False, default=list)
    preferred = PreferredSerializer(many=True, required=False, default=list)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        return {"required": list(value.get("required", [])), "preferred": list(value.get("preferred", []))}


class TolerationSerializer(StrictSerializer):
    key = serializers.CharField(required=False, allow_blank=True, default="")
    operator = serializers.ChoiceField(choices=["Equal", "Exists"], default="Equal")
    value = serializers.CharField(required=False, allow_blank=True, default="")
    effect = serializers.ChoiceField(choices=["", *TAINT_EFFECTS], required=False, default="")
    toleration_seconds = serializers.IntegerField(min_value=0, required=False, allow_null=True, default=None)

    def validate(self, attrs):
        if attrs["key"] and label_key_error(attrs["key"]):
            raise serializers.ValidationError({"key": [label_key_error(attrs["key"])]})
        if attrs["operator"] == "Exists" and attrs["value"]:
            raise serializers.ValidationError({"value": ["must be empty with operator Exists"]})
        if attrs["operator"] == "Equal" and not attrs["key"]:
            raise serializers.ValidationError({"key": ["is required with operator Equal"]})
        if attrs["toleration_seconds"] is not None and attrs["effect"] != "NoExecute":
            raise serializers.ValidationError({"toleration_seconds": ["only applies to effect NoExecute"]})
        return dict(attrs)


class SpreadSerializer(StrictSerializer):
    topology_key = serializers.CharField(validators=[_check_key])
    max_skew = serializers.IntegerField(min_value=1, default=1)
    when_unsatisfiable = serializers.ChoiceField(
        choices=["DoNotSchedule", "ScheduleAnyway"], default="DoNotSchedule"
    )


def validate_node_selector(value: dict) -> dict:
    for key, label in value.items():
        reason = label_key_error(key) or label_value_error(label)
        if reason:
            raise serializers.ValidationError(reason)
    return value
