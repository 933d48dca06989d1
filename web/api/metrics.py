"""Metrics series of the last 15 minutes: /api/v1/nodes/{name}/metrics,
/api/v1/namespaces/{ns}/deployments/{name}/metrics (one series per replica) and
/api/v1/namespaces/{ns}/replicas/{replica}/metrics. `?points=N` (default 180) caps the
points per series (averaged buckets)."""

from __future__ import annotations

import time

from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from nodes.models import Node
from orchestrator.models import Deployment, Replica
from web import metrics_store
from web.api.fields import StrictSerializer
from web.metrics_series import series
from web.permissions import can_view_cluster, can_view_namespace


class MetricsQuerySerializer(StrictSerializer):
    points = serializers.IntegerField(required=False, min_value=1, max_value=1000, default=180)


def _answer(request, keys: dict[str, str]):
    query = MetricsQuerySerializer(data=request.query_params.dict())
    query.is_valid(raise_exception=True)
    data = metrics_store.read(list(keys.values()))
    since = time.time() - metrics_store.WINDOW_SECONDS
    return Response(
        {
            "window_seconds": metrics_store.WINDOW_SECONDS,
            "series": {
                label: series(data[key], since=since, max_points=query.validated_data["points"])
                for label, key in keys.items()
            },
        }
    )


class NodeMetricsView(APIView):
    def get(self, request, name):
        node = Node.objects.filter(name=name).first()
        if node is None or not can_view_cluster(request.user):
            raise NotFound(f"node {name!r} not found")
        return _answer(request, {"node": metrics_store.node_key(node.pk)})


class DeploymentMetricsView(APIView):
    def get(self, request, namespace, name):
        deployment = (
            Deployment.live.select_related("namespace").filter(namespace__name=namespace, name=name).first()
        )
        if deployment is None or not can_view_namespace(request.user, deployment.namespace):
            raise NotFound(f"deployment {name!r} not found in namespace {namespace!r}")
        names = deployment.replica_set.order_by("created_at", "name").values_list("name", flat=True)
        return _answer(request, {n: metrics_store.replica_key(namespace, n) for n in names})


class ReplicaMetricsView(APIView):
    def get(self, request, namespace, replica):
        found = (
            Replica.objects.select_related("namespace")
            .filter(namespace__name=namespace, name=replica)
            .first()
        )
        if found is None or not can_view_namespace(request.user, found.namespace):
            raise NotFound(f"replica {replica!r} not found in namespace {namespace!r}")
        return _answer(request, {found.name: metrics_store.replica_key(namespace, found.name)})
