"""Deployments and their replicas: /api/v1/namespaces/{ns}/deployments/..."""

import re

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from orchestrator import services
from orchestrator.models import Deployment, Namespace, Replica
from orchestrator.names import dns_label_error
from orchestrator.quantities import QuantityError, format_cpu, format_memory, parse_cpu, parse_memory
from web.api.fields import StrictFieldsMixin, StrictSerializer
from web.api.placement import (
    AffinitySerializer,
    SpreadSerializer,
    TolerationSerializer,
    validate_node_selector,
)
from web.api.rollouts import (
    LivenessProbeSerializer,
    ProbeSerializer,
    RevisionSerializer,
    RollbackSerializer,
    UpdateStrategySerializer,
    revision_rows,
)

MAX_REPLICAS = 10_000
# A Docker image reference: [registry[:port]/]path[:tag][@digest], path in lower case.
_IMAGE = re.compile(
    r"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*(?::[\w][\w.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class PortSerializer(StrictSerializer):
    container = serializers.IntegerField(min_value=1, max_value=65535)
    host = serializers.IntegerField(min_value=1, max_value=65535, required=False, allow_null=True)
    protocol = serializers.ChoiceField(choices=["tcp", "udp"], default="tcp")


class ResourcesSerializer(StrictSerializer):
    cpu = serializers.CharField(required=False, allow_null=True, help_text="e.g. 250m, 0.5, 2")
    memory = serializers.CharField(required=False, allow_null=True, help_text="e.g. 64Mi, 1G")

    def validate_cpu(self, value):
        try:
            return None if value is None else parse_cpu(value)
        except QuantityError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_memory(self, value):
        try:
            return None if value is None else parse_memory(value)
        except QuantityError as exc:
            raise serializers.ValidationError(str(exc)) from None


class ConditionSerializer(serializers.Serializer):
    type = serializers.CharField()
    status = serializers.CharField()
    reason = serializers.CharField()
    message = serializers.CharField()
    last_transition_time = serializers.CharField()


class DeploymentStatusSerializer(serializers.Serializer):
    replicas = serializers.IntegerField(source="status_replicas")
    ready_replicas = serializers.IntegerField()
    available_replicas = serializers.IntegerField()
    updated_replicas = serializers.IntegerField(help_text="replicas running the current revision")
    revision = serializers.IntegerField(source="current_revision")
    observed_generation = serializers.IntegerField()
    conditions = ConditionSerializer(many=True)


class DeploymentSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    namespace = serializers.CharField(source="namespace.name", read_only=True)
    command = serializers.ListField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False),
        required=False,
        allow_null=True,
        max_length=256,
        help_text="Replaces the image's command; null or absent keeps the image's own.",
    )
    env = serializers.DictField(
        child=serializers.CharField(allow_blank=True, trim_whitespace=False), required=False
    )
    ports = PortSerializer(many=True, required=False)
    resources = ResourcesSerializer(required=False, help_text="Requests (and limits): cpu, memory.")
    replicas = serializers.IntegerField(min_value=0, max_value=MAX_REPLICAS, default=1)
    strategy = serializers.ChoiceField(choices=["spread", "binpack"], default="spread")
    node_selector = serializers.DictField(
        child=serializers.CharField(allow_blank=True), required=False, validators=[validate_node_selector]
    )
    affinity = AffinitySerializer(required=False)
    tolerations = TolerationSerializer(many=True, required=False)
    topology_spread = SpreadSerializer(many=True, required=False)
    max_per_node = serializers.IntegerField(min_value=1, required=False, allow_null=True)
    restart_policy = serializers.ChoiceField(choices=["always", "on-failure", "never"], default="always")
    termination_grace_seconds = serializers.IntegerField(
        min_value=0, max_value=3600, default=10, help_text="SIGTERM, this long, then SIGKILL"
    )
    readiness_probe = ProbeSerializer(required=False, allow_null=True)
    liveness_probe = LivenessProbeSerializer(required=False, allow_null=True)
    update_strategy = UpdateStrategySerializer(required=False)
    min_ready_seconds = serializers.IntegerField(min_value=0, max_value=3600, default=0)
    progress_deadline_seconds = serializers.IntegerField(min_value=1, max_value=86400, default=600)
    paused = serializers.BooleanField(default=False)
    on_failure = serializers.ChoiceField(
        choices=["none", "rollback"], default="none", help_text="what a failed rollout does"
    )
    node_loss_toleration_seconds = serializers.IntegerField(
        min_value=0,
        max_value=86400,
        default=5,
        help_text="wait this long before replacing replicas of a lost node",
    )
    status = DeploymentStatusSerializer(source="*", read_only=True)

    class Meta:
        model = Deployment
        fields = [
            "name",
            "namespace",
            "image",
            "command",
            "env",
            "ports",
            "resources",
            "replicas",
            "strategy",
            "node_selector",
            "affinity",
            "tolerations",
            "topology_spread",
            "max_per_node",
            "restart_policy",
            "termination_grace_seconds",
            "readiness_probe",
            "liveness_probe",
            "update_strategy",
            "min_ready_seconds",
            "progress_deadline_seconds",
            "paused",
            "on_failure",
            "node_loss_toleration_seconds",
            "generation",
            "created_at",
            "status",
        ]
        read_only_fields = ["generation", "created_at"]
        extra_kwargs = {"name": {"validators": []}}

    def validate_name(self, value):
        if self.instance is not None and value != self.instance.name:
            raise serializers.ValidationError("cannot be changed; create a new deployment instead")
        reason = dns_label_error(value)
        if reason:
            raise serializers.ValidationError(reason)
        return value

    def validate_image(self, value):
        if not _IMAGE.match(value):
            raise serializers.ValidationError(
                f"{value!r} is not an image reference such as 'nginx:1.27' "
                "or 'registry.example.com/team/app:2'"
            )
        return value

    def validate_env(self, value):
        bad = [name for name in value if not _ENV_NAME.match(name)]
        if bad:
            raise serializers.ValidationError(
                f"{bad[0]!r} is not a valid variable name "
                "(letters, digits, '_', '-', '.'; not starting with a digit)"
            )
        return value

    def validate_ports(self, value):
        seen_host, seen_container = set(), set()
        for port in value:
            key = (port["container"], port["protocol"])
            if key in seen_container:
                raise serializers.ValidationError(f"container port {key[0]}/{key[1]} is listed twice")
            seen_container.add(key)
            if port.get("host"):
                host_key = (port["host"], port["protocol"])
                if host_key in seen_host:
                    raise serializers.ValidationError(
                        f"host port {host_key[0]}/{host_key[1]} is listed twice"
                    )
                seen_host.add(host_key)
        return [
            {"container": p["container"], "host": p.get("host"), "protocol": p["protocol"]} for p in value
        ]

    def validate(self, attrs):
        if self.instance is None and not attrs.get("image"):
            raise serializers.ValidationError({"image": ["This field is required."]})
        if "resources" in attrs:
            resources = attrs.pop("resources") or {}
            if "cpu" in resources or self.instance is None:
                attrs["cpu_request"] = resources.get("cpu")
            if "memory" in resources or self.instance is None:
                attrs["memory_request"] = resources.get("memory")
        if "command" in attrs and not attrs["command"]:
            attrs["command"] = None
        for field in ("tolerations", "topology_spread"):
            if field in attrs:
                attrs[field] = [dict(item) for item in attrs[field]]
        min_ready = attrs.get("min_ready_seconds", getattr(self.instance, "min_ready_seconds", 0))
        deadline = attrs.get(
            "progress_deadline_seconds", getattr(self.instance, "progress_deadline_seconds", 600)
        )
        if deadline <= min_ready:
            raise serializers.ValidationError(
                {"progress_deadline_seconds": [f"must be longer than min_ready_seconds ({min_ready})"]}
            )
        keys = [c["topology_key"] for c in attrs.get("topology_spread", [])]
        if len(keys) != len(set(keys)):
            raise serializers.ValidationError({"topology_spread": ["a topology_key is listed twice"]})
        return attrs

    def to_representation(self, instance):
        data = super().to_representation(instance)
        data["resources"] = {
            "cpu": format_cpu(instance.cpu_request),
            "memory": format_memory(instance.memory_request),
        }
        return data

    def create(self, validated_data):
        return services.do_create_deployment(
            self.context["namespace"], validated_data, self.context["request"].user
        )

    def update(self, instance, validated_data):
        validated_data.pop("name", None)
        return services.do_update_deployment(instance, validated_data, self.context["request"].user)


class ReplicaSerializer(serializers.ModelSerializer):
    node = serializers.CharField(source="node.name", read_only=True, allow_null=True, default=None)
    deployment = serializers.CharField(source="deployment.name", read_only=True)

    class Meta:
        model = Replica
        fields = [
            "name",
            "deployment",
            "node",
            "phase",
            "message",
            "container_id",
            "exit_code",
            "last_exit_code",
            "restart_count",
            "ready",
            "ready_since",
            "health",
            "revision",
            "created_at",
            "scheduled_at",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


def namespace_or_404(name: str) -> Namespace:
    namespace = Namespace.objects.filter(name=name).first()
    if namespace is None:
        raise NotFound(f"namespace {name!r} not found")
    return namespace


class DeploymentViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = DeploymentSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_namespace(self) -> Namespace:
        if not hasattr(self, "_namespace"):
            self._namespace = namespace_or_404(self.kwargs["namespace"])
        return self._namespace

    def get_queryset(self):
        return Deployment.live.filter(namespace=self.get_namespace()).select_related("namespace")

    def get_object(self):
        name = self.kwargs["name"]
        deployment = self.get_queryset().filter(name=name).first()
        if deployment is None:
            raise NotFound(f"deployment {name!r} not found in namespace {self.kwargs['namespace']!r}")
        return deployment

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if "namespace" in self.kwargs:
            context["namespace"] = self.get_namespace()
        return context

    def perform_destroy(self, instance):
        services.do_delete_deployment(instance, self.request.user)

    def create(self, request, *args, **kwargs):
        self.get_namespace()
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        try:
            serializer.save()
        except services.NameTaken as exc:
            return Response({"name": [str(exc)]}, status=status.HTTP_409_CONFLICT)
        return Response(serializer.data, status=status.HTTP_201_CREATED)

    @extend_schema(responses=ReplicaSerializer(many=True))
    @action(detail=True, methods=["get"])
    def replicas(self, request, namespace=None, name=None):
        deployment = self.get_object()
        queryset = deployment.replica_set.select_related("node", "deployment").order_by("created_at", "name")
        page = self.paginate_queryset(queryset)
        serializer = ReplicaSerializer(page if page is not None else queryset, many=True)
        return self.get_paginated_response(serializer.data) if page is not None else Response(serializer.data)

    @extend_schema(responses=RevisionSerializer(many=True))
    @action(detail=True, methods=["get"])
    def revisions(self, request, namespace=None, name=None):
        """The deployment's revision history, newest first."""
        return Response(revision_rows(self.get_object()))

    @extend_schema(request=RollbackSerializer, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def rollback(self, request, namespace=None, name=None):
        """Run an earlier revision again (default: the one before the current)."""
        deployment = self.get_object()
        body = RollbackSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            services.do_rollback_deployment(deployment, body.validated_data.get("revision"), request.user)
        except services.RollbackError as exc:
            return Response({"revision": [str(exc)]}, status=status.HTTP_400_BAD_REQUEST)
        return Response(self.get_serializer(self.get_object()).data)

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def pause(self, request, namespace=None, name=None):
        """Pause the rollout: scaling still works, new revisions wait."""
        deployment = services.do_update_deployment(self.get_object(), {"paused": True}, request.user)
        return Response(self.get_serializer(deployment).data)

    @extend_schema(request=None, responses=DeploymentSerializer)
    @action(detail=True, methods=["post"])
    def resume(self, request, namespace=None, name=None):
        deployment = services.do_update_deployment(self.get_object(), {"paused": False}, request.user)
        return Response(self.get_serializer(deployment).data)


def get_deployment_or_404(namespace: str, name: str) -> Deployment:
    return get_object_or_404(
        Deployment.live.select_related("namespace"), namespace__name=namespace, name=name
    )
