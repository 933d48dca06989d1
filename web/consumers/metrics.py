"""Live metrics for a node, a deployment (each replica) or a replica: the last 15 minutes,
then a point per sample as the agents send them.

/ws/nodes/{name}/metrics/, /ws/namespaces/{ns}/deployments/{name}/metrics/,
/ws/namespaces/{ns}/replicas/{replica}/metrics/. The client sends `{"type": "subscribe"}`
and receives `{"type": "series", "series": {label: [point, ...]}}` and then
`{"type": "points", "points": {label: point}}` (labels: "node", or replica names; points as
in web/metrics_series.py). Agents sample every 5 s whether or not anyone watches: a
sample is one small frame per node, and the charts need the history.
"""

from __future__ import annotations

import time

from channels.db import database_sync_to_async

from nodes.models import Node
from orchestrator.broadcast import deployment_group
from orchestrator.models import Deployment, Replica
from web import metrics_store
from web.consumers.viewer import BadRequest, ViewerConsumer
from web.metrics_series import series
from web.permissions import can_view_cluster, can_view_namespace

MAX_POINTS = 300


def metric_keys(user, kind: str, kwargs: dict) -> tuple[dict[str, str], set[int], int | None]:
    """({label: redis key}, node ids to listen to, deployment id) of what the user asked for."""
    if kind == "node":
        node = Node.objects.filter(name=kwargs["name"]).first()
        if node is None or not can_view_cluster(user):
            raise BadRequest("node", f"node {kwargs['name']!r} not found")
        return {"node": metrics_store.node_key(node.pk)}, {node.pk}, None
    namespace = kwargs["namespace"]
    if kind == "replica":
        replica = (
            Replica.objects.select_related("namespace")
            .filter(namespace__name=namespace, name=kwargs["replica"])
            .first()
        )
        if replica is None or not can_view_namespace(user, replica.namespace):
            raise BadRequest("replica", f"replica {kwargs['replica']!r} not found in namespace {namespace!r}")
        replicas = [replica]
        deployment_id = replica.deployment_id
    else:
        deployment = (
            Deployment.live.select_related("namespace")
            .filter(namespace__name=namespace, name=kwargs["name"])
            .first()
        )
        if deployment is None or not can_view_namespace(user, deployment.namespace):
            raise BadRequest(
                "deployment", f"deployment {kwargs['name']!r} not found in namespace {namespace!r}"
            )
        replicas = list(deployment.replica_set.all())
        deployment_id = deployment.pk
    keys = {r.name: metrics_store.replica_key(namespace, r.name) for r in replicas}
    return keys, {r.node_id for r in replicas if r.node_id}, deployment_id


class MetricsConsumer(ViewerConsumer):
    kind = "node"

    async def connect(self):
        self.keys: dict[str, str] = {}
        self.groups: set[str] = set()
        self.subscribed = False
        await super().connect()

    async def on_message(self, content):
        if content["type"] != "subscribe":
            raise BadRequest("type", "the only message a metrics socket takes is 'subscribe'")
        await self._refresh()
        data = await metrics_store.read_async(list(self.keys.values()))
        since = time.time() - metrics_store.WINDOW_SECONDS
        await self.send_json(
            {
                "type": "series",
                "series": {
                    label: series(data[key], since=since, max_points=MAX_POINTS)
                    for label, key in self.keys.items()
                },
            }
        )
        self.subscribed = True

    async def _refresh(self):
        keys, node_ids, deployment_id = await database_sync_to_async(metric_keys)(
            self.user, self.kind, self.scope["url_route"]["kwargs"]
        )
        self.keys = keys
        wanted = {metrics_store.metrics_group(n) for n in node_ids}
        if deployment_id is not None:
            wanted.add(deployment_group(deployment_id))
        for group in wanted - self.groups:
            await self.channel_layer.group_add(group, self.channel_name)
        for group in self.groups - wanted:
            await self.channel_layer.group_discard(group, self.channel_name)
        self.groups = wanted

    async def state_changed(self, event):
        if self.subscribed:
            try:
                await self._refresh()
            except BadRequest:
                pass

    async def metrics_sampled(self, event):
        if not self.subscribed:
            return
        if self.kind == "node":
            labels = ["node"]
        else:
            sampled = {name.split("/", 1)[1] for name in event.get("replicas", ())}
            labels = [label for label in self.keys if label in sampled]
        if not labels:
            return
        data = await metrics_store.read_async([self.keys[label] for label in labels], count=2)
        points = {}
        for label in labels:
            computed = series(data[self.keys[label]])
            if computed:
                points[label] = computed[-1]
        if points:
            await self.send_json({"type": "points", "points": points})

    async def on_disconnect(self):
        for group in self.groups:
            await self.channel_layer.group_discard(group, self.channel_name)


class NodeMetricsConsumer(MetricsConsumer):
    kind = "node"


class DeploymentMetricsConsumer(MetricsConsumer):
    kind = "deployment"


class ReplicaMetricsConsumer(MetricsConsumer):
    kind = "replica"
