"""The terminal audit trail: GET /api/v1/terminal-sessions/?namespace=&replica=&user=, newest first.

Who may read it: users who may open terminals themselves (web.exec_replica) see their own
sessions; staff see everyone's."""

from rest_framework import serializers, viewsets

from web.models import TerminalSession
from web.permissions import can_audit_terminals


class TerminalSessionSerializer(serializers.ModelSerializer):
    duration_seconds = serializers.FloatField(read_only=True, allow_null=True)

    class Meta:
        model = TerminalSession
        fields = [
            "id",
            "username",
            "namespace",
            "deployment",
            "replica",
            "node",
            "container_id",
            "command",
            "client",
            "started_at",
            "ended_at",
            "duration_seconds",
            "exit_code",
            "end_reason",
        ]
        read_only_fields = fields


class TerminalSessionViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = TerminalSessionSerializer

    def get_queryset(self):
        queryset = TerminalSession.objects.all()
        user = self.request.user
        if not can_audit_terminals(user):
            queryset = queryset.filter(user=user)
        params = self.request.query_params
        for field in ("namespace", "replica", "deployment", "node"):
            if params.get(field):
                queryset = queryset.filter(**{field: params[field]})
        if params.get("user"):
            queryset = queryset.filter(username=params["user"])
        return queryset
