"""Nodes, join tokens and agent enrollment."""

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound
from rest_framework.response import Response

from nodes.labels import TAINT_EFFECTS, label_key_error, label_value_error, taint_identity
from nodes.models import Node
from nodes.services import (
    NodeNotRemovable,
    do_cordon_node,
    do_delete_node,
    do_drain_node,
    do_uncordon_node,
    do_update_node,
)
from orchestrator.quantities import QuantityError, format_cpu, format_memory, parse_cpu, parse_memory
from web.api.fields import StrictFieldsMixin, StrictSerializer


class ResourceListSerializer(serializers.Serializer):
    cpu = serializers.IntegerField(help_text="millicores")
    memory = serializers.IntegerField(help_text="bytes")


class LabelsField(serializers.DictField):
    """Reads the node's effective labels (agent's merged with the user's); writes the
    user's labels, which replace the previous user labels as a whole."""

    def __init__(self, **kwargs):
        super().__init__(child=serializers.CharField(allow_blank=True, trim_whitespace=False), **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        problems = [
            reason
            for key, item in value.items()
            for reason in (label_key_error(key), label_value_error(item))
            if reason
        ]
        if problems:
            raise serializers.ValidationError(problems)
        return value


class TaintSerializer(StrictSerializer):
    """A taint; NoExecute ones also show `time_added` (set by Berth, ignored on input so
    that what GET returns can be sent back)."""

    key = serializers.CharField(trim_whitespace=False)
    value = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    effect = serializers.ChoiceField(
        choices=TAINT_EFFECTS,
        error_messages={
            "invalid_choice": f'"{{input}}" is not an effect; use one of {", ".join(TAINT_EFFECTS)}'
        },
    )
    time_added = serializers.DateTimeField(read_only=True)

    def to_internal_value(self, data):
        if isinstance(data, dict) and "time_added" in data:
            data = {k: v for k, v in data.items() if k != "time_added"}
        return super().to_internal_value(data)

    def validate_key(self, value):
        reason = label_key_error(value)
        if reason:
            raise serializers.ValidationError(reason.replace("label key", "taint key"))
        return value

    def validate_value(self, value):
        reason = label_value_error(value)
        if reason:
            raise serializers.ValidationError(reason.replace("label value", "taint value"))
        return value

    def validate(self, attrs):
        # A PATCH is partial all the way down in DRF, which would let a taint lack its key.
        missing = {name: ["This field is required."] for name in ("key", "effect") if name not in attrs}
        if missing:
            raise serializers.ValidationError(missing)
        return {"key": attrs["key"], "value": attrs.get("value") or "", "effect": attrs["effect"]}


class ReservedSerializer(StrictSerializer):
    """Room kept back for the system, in Kubernetes quantities; a key left out keeps its
    value, null or "0" reserves nothing."""

    cpu = serializers.CharField(
        source="reserved_cpu", required=False, allow_null=True, help_text="e.g. 500m, 1"
    )
    memory = serializers.CharField(
        source="reserved_memory", required=False, allow_null=True, help_text="e.g. 512Mi, 1Gi"
    )

    def validate_cpu(self, value):
        try:
            return 0 if value is None else parse_cpu(value)
        except QuantityError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def validate_memory(self, value):
        try:
            return 0 if value is None else parse_memory(value)
        except QuantityError as exc:
            raise serializers.ValidationError(str(exc)) from None

    def to_representation(self, node):
        return {"cpu": format_cpu(node.reserved_cpu), "memory": format_memory(node.reserved_memory)}


class NodeSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    """A node. Writable (PATCH): `labels` (the user's, replacing them), `taints`,
    `unschedulable` (the cordon), `reserved`. Everything else is status."""

    labels = LabelsField(
        required=False,
        help_text="Read: the effective labels (the agent's, overridden by the user's). "
        "Write: the user's labels, replacing the previous ones.",
    )
    user_labels = serializers.DictField(child=serializers.CharField(), read_only=True)
    agent_labels = serializers.DictField(child=serializers.CharField(), read_only=True)
    taints = TaintSerializer(many=True, required=False)
    # source="*": reads the node itself, writes reserved_cpu / reserved_memory.
    reserved = ReservedSerializer(source="*", required=False)
    capacity = serializers.SerializerMethodField()
    allocatable = serializers.SerializerMethodField()
    image_count = serializers.SerializerMethodField()

    class Meta:
        model = Node
        fields = [
            "name",
            "status",
            "status_reason",
            "status_message",
            "labels",
            "user_labels",
            "agent_labels",
            "unschedulable",
            "drain_started_at",
            "taints",
            "capacity",
            "reserved",
            "allocatable",
            "image_count",
            "resource_version",
            "last_heartbeat",
            "engine_version",
            "agent_version",
            "address",
            "created_at",
        ]
        read_only_fields = [f for f in fields if f not in ("labels", "unschedulable", "taints", "reserved")]

    @extend_schema_field(ResourceListSerializer)
    def get_capacity(self, node) -> dict:
        return {"cpu": node.capacity_cpu, "memory": node.capacity_memory}

    @extend_schema_field(ResourceListSerializer)
    def get_allocatable(self, node) -> dict:
        return {"cpu": node.allocatable_cpu, "memory": node.allocatable_memory}

    def get_image_count(self, node) -> int:
        return len(node.images)

    def to_internal_value(self, data):
        try:
            return super().to_internal_value(data)
        except serializers.ValidationError as exc:
            read_only = sorted(
                set(data if isinstance(data, dict) else ())
                & {n for n, f in self.fields.items() if f.read_only}
            )
            if not read_only or not isinstance(exc.detail, dict):
                raise
            writable = ", ".join(sorted(n for n, f in self.fields.items() if not f.read_only))
            why = f"read-only: status reported by the agent or kept by Berth; writable fields: {writable}"
            raise serializers.ValidationError({**exc.detail, **{name: [why] for name in read_only}}) from None

    def validate_taints(self, value):
        seen = set()
        for taint in value:
            identity = taint_identity(taint)
            if identity in seen:
                raise serializers.ValidationError(
                    f"more than one taint with key {identity[0]!r} and effect {identity[1]}: "
                    "a node has at most one per key and effect"
                )
            seen.add(identity)
        return value

    def validate(self, attrs):
        """The API's shape to the node's fields: labels are the user's labels."""
        changes = {("user_labels" if k == "labels" else k): v for k, v in attrs.items()}
        node, errors = self.instance, []
        for key, capacity, show in (
            ("cpu", node.capacity_cpu, format_cpu),
            ("memory", node.capacity_memory, format_memory),
        ):
            wanted = changes.get(f"reserved_{key}")
            # Capacity is 0 until the agent first reports it: any reservation is allowed then.
            if wanted is not None and capacity and wanted > capacity:
                errors.append(f"{key}: {show(wanted)} is more than the node's capacity ({show(capacity)})")
        if errors:
            raise serializers.ValidationError({"reserved": errors})
        return changes

    def create(self, validated_data):
        raise NotImplementedError("nodes are created by enrolling an agent")

    def update(self, instance, validated_data):
        return do_update_node(instance, validated_data, self.context["request"].user)


class NodeDetailSerializer(NodeSerializer):
    """One node: also the images its engine has (the list leaves them out: up to 500 each)."""

    images = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta(NodeSerializer.Meta):
        fields = [*NodeSerializer.Meta.fields, "images"]
        read_only_fields = [*NodeSerializer.Meta.read_only_fields, "images"]


class NodeViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Nodes enroll themselves (an agent with a join token). PATCH changes what placement
    reads (labels, taints, cordon, reserved); DELETE removes a NotReady node."""

    queryset = Node.objects.all()
    serializer_class = NodeSerializer
    lookup_field = "name"
    lookup_value_regex = "[^/]+"
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]

    def get_serializer_class(self):
        return NodeSerializer if self.action == "list" else NodeDetailSerializer

    def get_object(self):
        name = self.kwargs["name"]
        node = Node.objects.filter(name=name).first()
        if node is None:
            raise NotFound(f"node {name!r} not found")
        return node

    def destroy(self, request, *args, **kwargs):
        try:
            do_delete_node(self.get_object(), request.user)
        except NodeNotRemovable as exc:
            return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=None, responses=NodeDetailSerializer)
    @action(detail=True, methods=["post"])
    def cordon(self, request, name=None):
        """Mark the node unschedulable: running replicas stay, no new ones are placed."""
        return Response(NodeDetailSerializer(do_cordon_node(self.get_object(), request.user)).data)

    @extend_schema(request=None, responses=NodeDetailSerializer)
    @action(detail=True, methods=["post"])
    def uncordon(self, request, name=None):
        """Let replicas be placed on the node again (this also ends a drain)."""
        return Response(NodeDetailSerializer(do_uncordon_node(self.get_object(), request.user)).data)

    @extend_schema(request=None, responses=NodeDetailSerializer)
    @action(detail=True, methods=["post"])
    def drain(self, request, name=None):
        """Cordon the node and move its replicas to other nodes, honouring each
        deployment's max_surge and max_unavailable. `status.draining` and the replica
        count show progress; uncordon ends it."""
        node = do_drain_node(self.get_object(), request.user)
        return Response(NodeDetailSerializer(node).data, status=status.HTTP_202_ACCEPTED)
