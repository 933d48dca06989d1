"""Serializer building blocks shared by the API resources."""

from rest_framework import serializers
from rest_framework.fields import empty


class StrictFieldsMixin:
    """Unknown fields are an error, not silently dropped: a typo like `replica` for
    `replicas` must not quietly do nothing."""

    def to_internal_value(self, data):
        errors = {}
        if isinstance(data, dict):
            writable = {name for name, field in self.fields.items() if not field.read_only}
            for name in sorted(set(data) - writable):
                errors[name] = [f"unknown field; expected one of: {', '.join(sorted(writable))}"]
            if self.parent is not None:
                # A PATCH makes DRF treat nested items as partial too; an item inside a list
                # (a port, a toleration) is always whole, so its required fields still apply.
                for name, field in self.fields.items():
                    if field.required and not field.read_only and name not in data:
                        errors[name] = ["This field is required."]
        try:
            value = super().to_internal_value(data)
        except serializers.ValidationError as exc:
            if not isinstance(exc.detail, dict):
                raise
            raise serializers.ValidationError({**exc.detail, **errors}) from None
        if errors:
            raise serializers.ValidationError(errors)
        if self.parent is not None:
            # ...and so are its defaults, which DRF skips under a partial root.
            for name, field in self.fields.items():
                if name not in value and not field.read_only and field.default is not empty:
                    # Not field.get_default(): under a partial root it skips the whole item.
                    default = field.default
                    value[field.source] = default() if callable(default) else default
        return value


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass
