"""Namespaces: /api/v1/namespaces/."""

from rest_framework import mixins, serializers, viewsets

from orchestrator.models import Namespace
from orchestrator.names import dns_label_error
from web.api.fields import StrictFieldsMixin


class NamespaceSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    class Meta:
        model = Namespace
        fields = ["name", "created_at"]
        read_only_fields = ["created_at"]

    def validate_name(self, value):
        reason = dns_label_error(value)
        if reason:
            raise serializers.ValidationError(reason)
        return value


class NamespaceViewSet(
    mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.CreateModelMixin, viewsets.GenericViewSet
):
    queryset = Namespace.objects.all()
    serializer_class = NamespaceSerializer
    lookup_field = "name"
