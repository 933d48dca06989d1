"""Observed phase of each replica, as reported in `status` frames (protocol section 2).

`describe` turns the engine's view of the containers, the actions in flight and the
restart history into one `ReplicaStatus` per replica, with a message a human can act on
("exited with code 1; restarting in 20 s"). Pure: the reconciler calls it whenever a
status frame is about to be sent.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from agent.converge import canonical_container, owned_by_replica
from agent.replicas import ContainerState, DesiredReplica, ObservedContainer, ReplicaKey
from agent.restarts import RestartRecord

_NO_HISTORY = RestartRecord()


class Phase(StrEnum):
    STARTING = "Starting"  # being pulled, created or started
    RUNNING = "Running"
    FAILED = "Failed"  # exited non-zero, could not be created, or waiting in back-off
    SUCCEEDED = "Succeeded"  # exited 0


@dataclass(frozen=True)
class Activity:
    """An action in flight for a replica, as a human reads it ("pulling image nginx:1.27")."""

    text: str
    stopping: bool = False  # removal: the container keeps its phase until it is gone


@dataclass(frozen=True)
class ReplicaStatus:
    name: str
    namespace: str
    container_id: str | None
    phase: Phase
    exit_code: int | None = None
    message: str = ""
    restart_count: int = 0
    started_at: float | None = None
    finished_at: float | None = None


def describe(
    desired: Iterable[DesiredReplica] | None,
    observed: Iterable[ObservedContainer],
    activities: Mapping[ReplicaKey, Activity],
    restarts: Mapping[ReplicaKey, RestartRecord],
    now: float,
    *,
    node: str,
) -> list[ReplicaStatus]:
    """One status per replica that is desired or has a container on this node, sorted by key.

    A desired replica without a container is reported too (Starting, or Failed with the
    reason it could not be created), so the control plane never waits in silence.
    `desired` is None before the first `desired` frame: only containers are reported.
    """
    wanted = {replica.key: replica for replica in desired or ()}
    groups, _unlabelled = owned_by_replica(observed, node)
    statuses = []
    for key in sorted(wanted.keys() | groups.keys()):
        containers = groups.get(key)
        container = canonical_container(key, containers) if containers else None
        statuses.append(
            _describe_one(
                key,
                wanted.get(key),
                container,
                activities.get(key),
                restarts.get(key, _NO_HISTORY),
                now,
            )
        )
    return statuses


def _describe_one(
    key: ReplicaKey,
    replica: DesiredReplica | None,
    container: ObservedContainer | None,
    activity: Activity | None,
    record: RestartRecord,
    now: float,
) -> ReplicaStatus:
    namespace, name = key
    if container is None:
        if activity is not None:
            phase, message = Phase.STARTING, activity.text
        elif record.error is not None:
            phase, message = Phase.FAILED, _with_retry(record.error, "retrying", record.retry_due_at(), now)
        else:
            phase, message = Phase.STARTING, "waiting to be created"
        return ReplicaStatus(
            name=name,
            namespace=namespace,
            container_id=None,
            phase=phase,
            message=message,
            restart_count=record.restart_count,
        )

    phase, message = _container_phase(replica, container, activity, record, now)
    stopped = container.is_stopped
    return ReplicaStatus(
        name=name,
        namespace=namespace,
        container_id=container.id,
        phase=phase,
        exit_code=container.exit_code if stopped else None,
        message=message,
        restart_count=record.restart_count,
        started_at=container.started_at,
        # Docker keeps the previous exit time while a restarted container runs: hide it.
        finished_at=container.finished_at if stopped else None,
    )


def _container_phase(
    replica: DesiredReplica | None,
    container: ObservedContainer,
    activity: Activity | None,
    record: RestartRecord,
    now: float,
) -> tuple[Phase, str]:
    if activity is not None and not activity.stopping and container.state != ContainerState.RUNNING:
        # A running container is reported Running at once, even before its start action
        # has finished its bookkeeping: the latency to "Running" is what users wait on.
        return Phase.STARTING, activity.text
    if activity is not None and not activity.stopping:
        activity = None
    removing = "; " + activity.text if activity is not None else ""
    state = container.state
    if state == ContainerState.RUNNING:
        return Phase.RUNNING, removing.removeprefix("; ")
    if state == ContainerState.PAUSED:
        return Phase.RUNNING, "paused" + removing
    if state == ContainerState.RESTARTING:
        return Phase.STARTING, "restarting" + removing
    if state == ContainerState.CREATED:
        if record.error is not None and replica is not None:
            return Phase.FAILED, _with_retry(record.error, "retrying", record.retry_due_at(), now)
        return Phase.STARTING, "created, not started yet" + removing

    # exited, dead, removing: the process is gone and its exit code tells how it went
    summary = exit_summary(container, replica)
    failed = container.oom_killed or bool(container.error) or container.exit_code != 0
    phase = Phase.FAILED if failed else Phase.SUCCEEDED
    if replica is None or activity is not None:
        return phase, summary + removing
    if record.error is not None:
        summary = f"{summary}; restart failed: {record.error}"
    due = max(record.restart_due_at(container), record.retry_due_at() or 0.0)
    return phase, _with_retry(summary, "restarting", due, now)


def exit_summary(container: ObservedContainer, replica: DesiredReplica | None = None) -> str:
    """Why the container's process is gone, in words: exit code, signal, OOM, start error."""
    if container.error:
        return f"failed to start: {container.error}"
    if container.oom_killed:
        limit = replica.resources.memory_bytes if replica is not None else None
        if limit:
            return f"killed: out of memory (limit {_format_bytes(limit)})"
        return "killed: out of memory"
    code = container.exit_code
    if code is None:
        return "exited"
    if 128 < code < 128 + 65:
        try:
            return f"exited with code {code} ({signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exited with code {code}"


def _with_retry(text: str, verb: str, due: float | None, now: float) -> str:
    if due is None or due <= now:
        return f"{text}; {verb} now"
    return f"{text}; {verb} in {math.ceil(due - now)} s"


def _format_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} B"
