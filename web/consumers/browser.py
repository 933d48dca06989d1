"""Browsers' WebSockets: one per page, pushing fresh state whenever it changes.

Controllers publish pokes ("state.changed") to groups; each consumer re-reads what its
user may see and sends a snapshot. Pokes that arrive while a snapshot is being built
fold into one more snapshot, so a burst of changes never queues up work per viewer.
"""

import asyncio
import logging
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.db.models import Q

from nodes.models import Node
from orchestrator.broadcast import CLUSTER_GROUP, deployment_group
from orchestrator.models import Deployment, Event
from web import listing
from web.api.deployments import DeploymentSerializer, ReplicaSerializer
from web.api.events import EventSerializer
from web.api.nodes import NodeSerializer
from web.api.rollouts import revision_rows
from web.permissions import can_view_cluster, can_view_namespace

log = logging.getLogger(__name__)
CLUSTER_EVENTS = 20  # the overview's feed
# A page gets at most one snapshot per this many seconds: under load (a deploy of thousands
# of replicas pokes the cluster group after every pass) a viewer costs the web process a
# snapshot a second, not one per change; changes meanwhile fold into the next.
SNAPSHOT_EVERY_SECONDS = 1.0


class SnapshotConsumer(AsyncJsonWebsocketConsumer):
    """Subclasses say which group to join (`authorise`) and what to send (`snapshot`)."""

    group: str | None = None

    async def connect(self):
        self._task: asyncio.Task | None = None
        self._dirty = False
        self._sent_at = asyncio.get_running_loop().time()  # the first snapshot goes below
        user = self.scope.get("user")
        if not (user and user.is_authenticated):
            await self.close()  # before accept: the handshake is refused (403)
            return
        self.group = await database_sync_to_async(self.authorise)(user)
        if self.group is None:
            await self.close()
            return
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json(await database_sync_to_async(self.snapshot)())

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self._task:
            self._task.cancel()

    async def receive_json(self, content, **kwargs):
        pass  # nothing to ask for yet: the server pushes

    async def state_changed(self, event):
        if self._task and not self._task.done():
            self._dirty = True
            return
        self._task = asyncio.create_task(self._refresh())

    async def _refresh(self):
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(max(0.0, self._sent_at + SNAPSHOT_EVERY_SECONDS - loop.time()))
                self._dirty = False
                self._sent_at = loop.time()
                await self.send_json(await database_sync_to_async(self.snapshot)())
                if not self._dirty:
                    return
        except Exception:
            log.exception("could not send a snapshot to a browser")

    def authorise(self, user) -> str | None:
        raise NotImplementedError

    def snapshot(self) -> dict:
        raise NotImplementedError


class DeploymentConsumer(SnapshotConsumer):
    """/ws/namespaces/{ns}/deployments/{name}/[?page=N&q=...]: the deployment, a page of its
    replicas (web/listing.py), its events; `?replica=NAME` adds that replica (its page)."""

    def authorise(self, user):
        kwargs = self.scope["url_route"]["kwargs"]
        deployment = (
            Deployment.live.select_related("namespace")
            .filter(namespace__name=kwargs["namespace"], name=kwargs["name"])
            .first()
        )
        if deployment is None or not can_view_namespace(user, deployment.namespace):
            return None
        self.deployment_id = deployment.pk
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.view = listing.View.parse("replicas", query)
        self.replica_name = (query.get("replica") or [""])[0]
        return deployment_group(deployment.pk)

    def snapshot(self):
        deployment = Deployment.live.select_related("namespace").filter(pk=self.deployment_id).first()
        if deployment is None:
            return {"type": "deleted"}
        page = listing.replicas_page(deployment, self.view)
        replicas = list(page.object_list)
        own = Q(object_uid=deployment.uid) | Q(object_uid__in=deployment.replica_set.values("uid"))
        events = deployment.namespace.event_set.filter(own)[:20]
        data = {
            "type": "deployment",
            "deployment": DeploymentSerializer(deployment).data,
            "replicas": ReplicaSerializer(replicas, many=True).data,
            "pager": listing.page_info(page, self.view),
            "old_replicas": listing.old_replicas(deployment, deployment.revision()),
            "revisions": revision_rows(deployment),
            "events": EventSerializer(events, many=True).data,
        }
        if self.replica_name:
            replica = deployment.replica_set.select_related("node", "namespace", "deployment")
            found = replica.filter(name=self.replica_name).first()
            data["replica"] = ReplicaSerializer(found).data if found is not None else None
        return data


class ClusterConsumer(SnapshotConsumer):
    """/ws/cluster/?view=overview|nodes|deployments[&page=N&q=...]: what that page lists
    (web/listing.py: a page of rows, not the whole fleet), the counts, the latest events;
    /ws/cluster/?node=NAME: that node, its events and replicas (the node page)."""

    def authorise(self, user):
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.node_name = (query.get("node") or [""])[0]
        kind = (query.get("view") or ["overview"])[0]
        self.view = listing.View.parse(kind if kind in VIEWS else "overview", query)
        return CLUSTER_GROUP if can_view_cluster(user) else None

    def snapshot(self):
        if self.node_name:
            return self._node_snapshot()
        data = {"type": "cluster", "counts": listing.counts()}
        if self.view.kind == "nodes":
            page = listing.nodes_page(self.view)
            data["nodes"], data["pager"] = _nodes(page.object_list), listing.page_info(page, self.view)
        elif self.view.kind == "deployments":
            page = listing.deployments_page(self.view)
            data["deployments"] = _deployments(page.object_list)
            data["pager"] = listing.page_info(page, self.view)
        else:
            data["nodes"] = _nodes(listing.overview_nodes())
            data["deployments"] = _deployments(listing.overview_deployments())
            data["events"] = EventSerializer(
                Event.objects.select_related("namespace")[:CLUSTER_EVENTS], many=True
            ).data
        return data

    def _node_snapshot(self):
        node = Node.objects.filter(name=self.node_name).first()
        if node is None:
            return {"type": "cluster", "node": None}  # removed: the page goes back to the list
        replicas = node.replicas.select_related("namespace", "deployment").order_by("namespace__name", "name")
        return {
            "type": "cluster",
            "node": NodeSerializer(node).data,
            "node_events": EventSerializer(
                Event.objects.filter(kind="Node", object_uid=node.uid)[:20], many=True
            ).data,
            "node_replicas": [
                {
                    "namespace": r.namespace.name,
                    "deployment": r.deployment.name,
                    "name": r.name,
                    "phase": r.phase,
                    "message": r.message,
                }
                for r in replicas
            ],
        }


VIEWS = ("overview", "nodes", "deployments")


def _nodes(nodes) -> list:
    return NodeSerializer(nodes, many=True).data


def _deployments(deployments) -> list[dict]:
    return [
        {
            "namespace": d.namespace.name,
            "name": d.name,
            "image": d.image,
            "replicas": d.replicas,
            "ready_replicas": d.ready_replicas,
        }
        for d in deployments
    ]
