"""Serializer building blocks shared by the API resources."""

from rest_framework import serializers


class StrictFieldsMixin:
    """Unknown fields are an error, not silently dropped: a typo like `replica` for
    `replicas` must not quietly do nothing."""

    def to_internal_value(self, data):
        errors = {}
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            for name in sorted(set(data) - writable):
                errors[name] = [f"unknown field; expected one of: {', '.join(sorted(writable))}"]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, dict):
                raise
            raise serializers.ValidationError({**exc.detail, **errors}) from None
        if errors:
            raise serializers.ValidationError(errors)
        return value


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass
