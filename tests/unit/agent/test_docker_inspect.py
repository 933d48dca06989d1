"""Reading the Docker engine's inspect answers (no engine needed)."""

from __future__ import annotations

from datetime import UTC, datetime

from agent.replicas import ContainerState
from agent.runtime.docker import image_references, observed_from_inspect, parse_engine_time

LABELS = {
    "berth.managed": "true",
    "berth.node": "h1",
    "berth.namespace": "default",
    "berth.replica": "a",
    "berth.deployment": "web",
    "berth.revision": "r1",
}


def inspect(status, **state):
    return {
        "Id": "abc123",
        "Name": "/default_a",
        "Config": {"Image": "berth-test/busybox:1", "Labels": LABELS},
        "State": {
            "Status": status,
            "ExitCode": 0,
            "Error": "",
            "OOMKilled": False,
            "StartedAt": "2026-11-22T11:00:00.123456789Z",
            "FinishedAt": "0001-01-01T00:00:00Z",
            **state,
        },
    }


def test_running_container():
    container = observed_from_inspect(inspect("running"))
    assert (container.id, container.name, container.state) == ("abc123", "default_a", ContainerState.RUNNING)
    assert (
        container.key == ("default", "a") and container.is_owned_by("h1") and not container.is_owned_by("h2")
    )
    assert container.exit_code is None and container.finished_at is None
    assert container.started_at == datetime(2026, 11, 22, 11, 0, 0, 123456, tzinfo=UTC).timestamp()


def test_exited_container():
    container = observed_from_inspect(
        inspect("exited", ExitCode=137, OOMKilled=True, FinishedAt="2026-11-22T11:00:05Z")
    )
    assert (container.exit_code, container.oom_killed) == (137, True)
    assert container.finished_at == datetime(2026, 11, 22, 11, 0, 5, tzinfo=UTC).timestamp()


def test_engine_times():
    assert parse_engine_time("0001-01-01T00:00:00Z") is None
    assert parse_engine_time("") is None
    assert (
        parse_engine_time("2026-11-22T11:00:00.5+01:00")
        == datetime(2026, 11, 22, 10, 0, 0, 500000, tzinfo=UTC).timestamp()
    )


def test_image_references_newest_first_without_dangling_images():
    images = [
        {"Id": "sha256:1", "Created": 100, "RepoTags": ["berth-test/busybox:1", "busybox:latest"]},
        {"Id": "sha256:2", "Created": 300, "RepoTags": ["<none>:<none>"]},
        {"Id": "sha256:3", "Created": 200, "RepoTags": ["nginx:1.27"]},
        {"Id": "sha256:4", "Created": 50, "RepoTags": None},
    ]
    assert image_references(images) == ("nginx:1.27", "berth-test/busybox:1", "busybox:latest")
    assert image_references(images, limit=2) == ("nginx:1.27", "berth-test/busybox:1")


def test_healthcheck_status():
    from agent.replicas import Health

    assert observed_from_inspect(inspect("running")).health is None  # no HEALTHCHECK in the image
    healthy = inspect("running", Health={"Status": "healthy", "FailingStreak": 0, "Log": []})
    assert observed_from_inspect(healthy).health == Health.HEALTHY
    assert (
        observed_from_inspect(inspect("running", Health={"Status": "unhealthy"})).health == Health.UNHEALTHY
    )
    assert observed_from_inspect(inspect("running", Health={"Status": "none"})).health is None


def test_health_status_events_are_watched():
    from agent.runtime.docker import watched

    assert watched("health_status: healthy") and watched("health_status: unhealthy")
    assert watched("die") and watched("start")
    assert not watched("exec_start: cat /tmp/alive") and not watched("exec_die")  # probes' own execs


def test_container_address():
    from agent.runtime.docker import container_address

    bridge = {"NetworkSettings": {"IPAddress": "172.17.0.2", "Networks": {}}}
    assert container_address(bridge) == "172.17.0.2"
    user_network = {"NetworkSettings": {"IPAddress": "", "Networks": {"app": {"IPAddress": "10.5.0.7"}}}}
    assert container_address(user_network) == "10.5.0.7"
    assert container_address({"HostConfig": {"NetworkMode": "host"}, "NetworkSettings": {}}) == "127.0.0.1"
    assert container_address({"NetworkSettings": {"IPAddress": "", "Networks": {}}}) is None
