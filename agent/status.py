"""Observed phase of each replica, as reported in `status` frames (protocol section 2).

`describe` turns the engine's view of the containers, the actions in flight, the restart
history and the probes' verdicts into one `ReplicaStatus` per replica, with a message a
human can act on ("exited with code 1; restarting in 20 s", "readiness probe failed:
HTTP GET :8080/healthz: status 503") and whether it is ready for traffic. Pure: the
reconciler calls it whenever a status frame is about to be sent.
"""

from __future__ import annotations

import math
import re
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from agent.converge import canonical_container, owned_by_replica, restarts_after_exit, unhealthy_reason
from agent.probes import ContainerProbes
from agent.replicas import (
    ContainerState,
    DesiredReplica,
    Health,
    ObservedContainer,
    ReplicaKey,
    RestartPolicy,
)
from agent.restarts import RestartRecord

_NO_HISTORY = RestartRecord()
_NO_PROBES: Mapping[str, ContainerProbes] = {}


class Phase(StrEnum):
    STARTING = "Starting"  # being pulled, created or started
    RUNNING = "Running"
    FAILED = "Failed"  # exited non-zero, could not be created, or waiting in back-off
    SUCCEEDED = "Succeeded"  # exited 0


@dataclass(frozen=True)
class Activity:
    """An action in flight for a replica, as a human reads it ("pulling image nginx:1.27")."""

    text: str
    # Stopping the process (remove, replace, restart in place): the container keeps its
    # phase until it is gone, and is not ready from the moment the stop is decided.
    stopping: bool = False
    # Creating or starting a container: the engine gives its outcome within moments (not
    # a pull, which may take minutes), so a status frame may wait a little for it.
    quick: bool = False


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
    ready: bool = False
    ready_since: float | None = None
    health: Health | None = None
    last_exit_code: int | None = None


@dataclass(frozen=True)
class Readiness:
    ready: bool
    since: float | None = None
    why_not: str = ""  # a probe failure or the HEALTHCHECK's verdict, for the message


# What a replica's status was last described from (desired entry, container, activity,
# restart record, probe view) and that status: `describe` reuses the status while every one
# of those is the same object. They are all frozen, so "the same object" means "unchanged".
Memo = dict[ReplicaKey, tuple[object, object, object, object, object, "ReplicaStatus"]]


def describe(
    desired: Iterable[DesiredReplica] | None,
    observed: Iterable[ObservedContainer],
    activities: Mapping[ReplicaKey, Activity],
    restarts: Mapping[ReplicaKey, RestartRecord],
    now: float,
    *,
    node: str,
    probes: Mapping[str, ContainerProbes] = _NO_PROBES,
    memo: Memo | None = None,
) -> list[ReplicaStatus]:
    """One status per replica that is desired or has a container on this node, sorted by key.

    A desired replica without a container is reported too (Starting, or Failed with the
    reason it could not be created), so the control plane never waits in silence.
    `desired` is None before the first `desired` frame: only containers are reported.

    With `memo` (kept by the caller between calls), a replica whose inputs are unchanged
    keeps its last status, the same object: a node reporting one change among hundreds of
    replicas describes one. Statuses that count down ("restarting in 8 s") are described
    afresh each time.
    """
    wanted = {replica.key: replica for replica in desired or ()}
    groups, _unlabelled = owned_by_replica(observed, node)
    statuses = []
    kept: Memo = {}
    for key in sorted(wanted.keys() | groups.keys()):
        containers = groups.get(key)
        if not containers:
            container = None
        elif len(containers) == 1:
            container = containers[0]
        else:
            container = canonical_container(key, containers)
        replica, activity = wanted.get(key), activities.get(key)
        record = restarts.get(key, _NO_HISTORY)
        view = probes.get(container.id) if container is not None else None
        last = memo.get(key) if memo is not None else None
        if (
            last is not None
            and last[0] is replica
            and last[1] is container
            and last[2] is activity
            and last[3] is record
            and last[4] is view
        ):
            status = last[5]
            kept[key] = last
        else:
            status = _describe_one(key, replica, container, activity, record, view, now)
            if memo is not None and not _counts_down(status.message):
                kept[key] = (replica, container, activity, record, view, status)
        statuses.append(status)
    if memo is not None:
        memo.clear()
        memo.update(kept)
    return statuses


def readiness(
    replica: DesiredReplica | None,
    container: ObservedContainer,
    activity: Activity | None,
    probes: ContainerProbes | None,
) -> Readiness:
    """Whether the replica takes traffic (protocol section 2, `ready`), since when, and why not.

    Ready: desired, running this revision, no stop decided, the readiness probe (if any)
    passing in this run, and the image's HEALTHCHECK (if any) healthy.
    """
    if (
        replica is None
        or container.state != ContainerState.RUNNING
        or container.revision != replica.revision
        or (activity is not None and activity.stopping)
    ):
        return Readiness(False)
    since = [container.started_at]
    current = probes if probes is not None and probes.started_at == container.started_at else None
    if replica.readiness_probe is not None:
        state = current.readiness if current is not None else None
        if state is None or not state.passing:
            return Readiness(False, why_not=state.failure_message() if state and state.detail else "")
        since.append(state.since)
    if container.health is not None:
        if container.health != Health.HEALTHY:
            return Readiness(False, why_not=f"health check: {container.health}")
        if current is not None and current.health == Health.HEALTHY:
            since.append(current.health_since)
    known = [t for t in since if t is not None]
    return Readiness(True, max(known) if known else None)


def _describe_one(
    key: ReplicaKey,
    replica: DesiredReplica | None,
    container: ObservedContainer | None,
    activity: Activity | None,
    record: RestartRecord,
    probes: ContainerProbes | None,
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
            last_exit_code=record.last_exit_code,
        )

    ready = readiness(replica, container, activity, probes)
    phase, message = _container_phase(replica, container, activity, record, probes, ready, now)
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
        ready=ready.ready,
        ready_since=ready.since,
        health=container.health,
        last_exit_code=container.exit_code if stopped else record.last_exit_code,
    )


def _container_phase(
    replica: DesiredReplica | None,
    container: ObservedContainer,
    activity: Activity | None,
    record: RestartRecord,
    probes: ContainerProbes | None,
    ready: Readiness,
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
        if activity is not None or replica is None:
            return Phase.RUNNING, removing.removeprefix("; ")
        reason = unhealthy_reason(replica, container, probes)
        if reason is not None and replica.restart_policy == RestartPolicy.NEVER:
            return Phase.RUNNING, f"{reason}; stopping (restart policy never)"
        if reason is not None:
            due = record.unhealthy_restart_due_at(container, now)
            return Phase.RUNNING, _with_retry(reason, "restarting", due, now)
        return Phase.RUNNING, ready.why_not
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
    # Stopped by the agent for failing its liveness check: a failure whatever the exit code.
    phase = Phase.FAILED if container.failed or record.stopped_for is not None else Phase.SUCCEEDED
    if replica is None or activity is not None:
        return phase, summary + removing
    if not restarts_after_exit(replica, container, record):
        policy = f"restart policy {replica.restart_policy}: not restarting"
        if record.stopped_for is not None:
            return Phase.FAILED, f"{record.stopped_for}; stopped ({summary}); {policy}"
        return phase, f"{summary}; {policy}"
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
    # The only text that depends on the time: _counts_down must recognise what it writes.
    if due is None or due <= now:
        return f"{text}; {verb} now"
    return f"{text}; {verb} in {math.ceil(due - now)} s"


_COUNTDOWN = re.compile(r"; (restarting|retrying) in \d+ s$")


def _counts_down(message: str) -> bool:
    """Whether a message shows a wait that changes with time (written by _with_retry)."""
    return message.endswith(" s") and _COUNTDOWN.search(message) is not None


def _format_bytes(count: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            value = count / size
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    return f"{count} B"
