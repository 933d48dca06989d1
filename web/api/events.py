"""Events: /api/v1/events/?namespace=&kind=&name=, newest first."""

from rest_framework import serializers, viewsets

from orchestrator.models import Event


class EventSerializer(serializers.ModelSerializer):
    namespace = serializers.CharField(source="namespace.name", read_only=True, default=None)

    class Meta:
        model = Event
        fields = [
            "kind",
            "namespace",
            "name",
            "type",
            "reason",
            "message",
            "count",
            "first_seen",
            "last_seen",
            "actor",
        ]
        read_only_fields = fields


class EventViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = EventSerializer

    def get_queryset(self):
        queryset = Event.objects.select_related("namespace")
        params = self.request.query_params
        if params.get("namespace"):
            queryset = queryset.filter(namespace__name=params["namespace"])
        if params.get("kind"):
            queryset = queryset.filter(kind=params["kind"])
        if params.get("name"):
            queryset = queryset.filter(name=params["name"])
        return queryset
