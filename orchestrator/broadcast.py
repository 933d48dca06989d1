"""Telling browsers that something changed. Messages are pokes: each browser consumer
re-reads what its user may see, so nothing is sent to a viewer it should not reach."""

from orchestrator.publish import group_send_many

CLUSTER_GROUP = "cluster"


def deployment_group(deployment_id: int) -> str:
    return f"deployment.{deployment_id}"


def notify_deployments(deployment_ids) -> None:
    groups = [deployment_group(pk) for pk in sorted(set(deployment_ids))] + [CLUSTER_GROUP]
    group_send_many((group, {"type": "state.changed"}) for group in groups)


def notify_cluster() -> None:
    group_send_many([(CLUSTER_GROUP, {"type": "state.changed"})])
