"""Small constructors for the agent's dataclasses, so tests read as situations."""

from __future__ import annotations

from agent.replicas import (
    MANAGED_LABEL,
    NODE_LABEL,
    ContainerState,
    DesiredReplica,
    ObservedContainer,
    Resources,
    container_name,
)

NODE = "h1"


def want(name: str, namespace: str = "default", revision: str = "r1", **kw) -> DesiredReplica:
    return DesiredReplica(
        name=name,
        namespace=namespace,
        deployment=kw.pop("deployment", "web"),
        revision=revision,
        image=kw.pop("image", "berth-test/busybox:1"),
        resources=kw.pop("resources", Resources()),
        **kw,
    )


def have(
    name: str,
    state: ContainerState = ContainerState.RUNNING,
    *,
    namespace: str = "default",
    revision: str = "r1",
    node: str = NODE,
    cid: str | None = None,
    container: str | None = None,
    **kw,
) -> ObservedContainer:
    """A container of replica `name` owned by `node` (labels as the agent writes them)."""
    labels = want(name, namespace, revision).labels(node)
    return ObservedContainer(
        id=cid or f"id-{namespace}-{name}-{node}",
        name=container or container_name(namespace, name),
        state=state,
        labels=labels,
        **kw,
    )


def foreign(name: str, cid: str, *, labels: dict[str, str] | None = None, **kw) -> ObservedContainer:
    """A container that is not ours: no Berth labels by default."""
    return ObservedContainer(
        id=cid, name=name, state=kw.pop("state", ContainerState.RUNNING), labels=labels or {}, **kw
    )


__all__ = ["MANAGED_LABEL", "NODE", "NODE_LABEL", "foreign", "have", "want"]
