"""Telling browsers that something changed. Messages are pokes: each browser consumer
re-reads what its user may see, so nothing is sent to a viewer it should not reach."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

CLUSTER_GROUP = "cluster"


def deployment_group(deployment_id: int) -> str:
    return f"deployment.{deployment_id}"


def notify_deployments(deployment_ids) -> None:
    layer = get_channel_layer()
    for deployment_id in set(deployment_ids):
        async_to_sync(layer.group_send)(deployment_group(deployment_id), {"type": "state.changed"})
    async_to_sync(layer.group_send)(CLUSTER_GROUP, {"type": "state.changed"})


def notify_cluster() -> None:
    async_to_sync(get_channel_layer().group_send)(CLUSTER_GROUP, {"type": "state.changed"})
