"""Join tokens (created by users, shown once) and agent enrollment (docs/agent-protocol.md)."""

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from nodes.models import JoinToken
from nodes.services import EnrollmentRefused, do_create_join_token, do_enroll_node, do_revoke_join_token
from orchestrator.names import dns_label_error
from web.api.fields import StrictFieldsMixin, StrictSerializer


class JoinTokenSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    ttl_seconds = serializers.IntegerField(
        write_only=True, required=False, min_value=60, max_value=365 * 24 * 3600, help_text="default 24 h"
    )

    class Meta:
        model = JoinToken
        fields = [
            "id",
            "prefix",
            "description",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "use_count",
            "ttl_seconds",
        ]
        read_only_fields = [
            "id",
            "prefix",
            "created_at",
            "expires_at",
            "revoked_at",
            "last_used_at",
            "use_count",
        ]


class JoinTokenViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Join tokens let agents enroll servers. The token itself is shown only in the
    response to its creation; DELETE revokes it."""

    queryset = JoinToken.objects.all()
    serializer_class = JoinTokenSerializer

    @extend_schema(
        responses={
            201: inline_serializer(
                "CreatedJoinToken",
                {
                    "token": serializers.CharField(),
                    "prefix": serializers.CharField(),
                    "expires_at": serializers.DateTimeField(),
                },
            )
        }
    )
    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        token, clear = do_create_join_token(
            request.user,
            serializer.validated_data.get("ttl_seconds"),
            serializer.validated_data.get("description", ""),
        )
        data = JoinTokenSerializer(token).data
        data["token"] = clear
        return Response(data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance):
        do_revoke_join_token(instance, self.request.user)


class EnrollSerializer(StrictSerializer):
    join_token = serializers.CharField(trim_whitespace=True)
    name = serializers.CharField(max_length=63)
    labels = serializers.DictField(
        child=serializers.CharField(max_length=63, allow_blank=True), required=False
    )

    def validate_name(self, value):
        reason = dns_label_error(value)
        if reason:
            raise serializers.ValidationError(reason)
        return value


class EnrollView(APIView):
    """An agent exchanges a join token for its node's credential (docs/agent-protocol.md)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        request=EnrollSerializer,
        responses={
            201: inline_serializer(
                "Enrolled", {"node": serializers.CharField(), "credential": serializers.CharField()}
            )
        },
    )
    def post(self, request):
        serializer = EnrollSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            node, credential = do_enroll_node(data["join_token"], data["name"], data.get("labels", {}))
        except EnrollmentRefused as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_401_UNAUTHORIZED)
        return Response({"node": node.name, "credential": credential}, status=status.HTTP_201_CREATED)
