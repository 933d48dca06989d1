"""The wire format: frames from the protocol document parse, malformed ones are refused whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.protocol import (
    DesiredSet,
    ProtocolError,
    UnknownFrame,
    Welcome,
    hello_frame,
    parse_frame,
    status_frame,
)
from agent.replicas import PortMapping, Resources
from agent.runtime import EngineInfo
from agent.status import Phase, ReplicaStatus

DOC_DESIRED = {
    "type": "desired",
    "generation": 8,
    "replicas": [
        {
            "name": "web-7k2pq",
            "namespace": "default",
            "deployment": "web",
            "revision": "3f9a",
            "image": "nginx:1.27",
            "command": ["nginx", "-g", "daemon off;"],
            "env": {"A": "1"},
            "ports": [{"container": 80, "host": 8080, "protocol": "tcp"}],
            "resources": {"cpu_millis": 250, "memory_bytes": 67108864},
        }
    ],
}


def test_desired_frame_from_the_document():
    frame = parse_frame(json.dumps(DOC_DESIRED))
    assert isinstance(frame, DesiredSet)
    assert frame.generation == 8
    (replica,) = frame.replicas
    assert replica.key == ("default", "web-7k2pq")
    assert replica.container_name == "default_web-7k2pq"
    assert replica.command == ("nginx", "-g", "daemon off;")
    assert replica.env == (("A", "1"),)
    assert replica.ports == (PortMapping(container=80, host=8080, protocol="tcp"),)
    assert replica.resources == Resources(cpu_millis=250, memory_bytes=67108864)


def test_nulls_mean_defaults():
    entry = {
        **DOC_DESIRED["replicas"][0],
        "command": None,
        "ports": [{"container": 53, "host": None, "protocol": "udp"}],
        "resources": {"cpu_millis": None, "memory_bytes": 0},
    }
    (replica,) = parse_frame(json.dumps({**DOC_DESIRED, "replicas": [entry]})).replicas
    assert replica.command is None
    assert replica.ports == (PortMapping(container=53, host=None, protocol="udp"),)
    assert replica.resources == Resources()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"name": "Web_1"}, "name"),
        ({"namespace": "a_b"}, "namespace"),
        ({"image": ""}, "image"),
        ({"command": "sleep 1"}, "command"),
        ({"env": {"A": 1}}, "env"),
        ({"ports": [{"container": 70000}]}, "container"),
        ({"resources": {"cpu_millis": -1}}, "cpu_millis"),
    ],
)
def test_a_bad_replica_rejects_the_whole_frame(change, field):
    entry = {**DOC_DESIRED["replicas"][0], **change}
    with pytest.raises(ProtocolError, match=field):
        parse_frame(json.dumps({**DOC_DESIRED, "replicas": [entry]}))


def test_duplicate_replica_is_rejected():
    with pytest.raises(ProtocolError, match="twice"):
        parse_frame(json.dumps({**DOC_DESIRED, "replicas": DOC_DESIRED["replicas"] * 2}))


def test_welcome_and_unknown_frames():
    assert parse_frame('{"type": "welcome", "node": "h1", "heartbeat_interval": 2.0}') == Welcome("h1", 2.0)
    assert parse_frame('{"type": "logs.subscribe"}') == UnknownFrame("logs.subscribe")
    with pytest.raises(ProtocolError):
        parse_frame("not json")
    with pytest.raises(ProtocolError):
        parse_frame('{"type": "welcome", "node": "h1", "heartbeat_interval": 0}')


STARTED = datetime(2026, 11, 22, 11, 0, 0, 500000, tzinfo=UTC).timestamp()


def test_hello_and_status_frames():
    hello = hello_frame(
        EngineInfo("20.10.24", 2000, 25_000_000_000, images=("berth-test/busybox:1",)), {"zone": "a"}
    )
    assert hello == {
        "type": "hello",
        "agent_version": "0.1.0",
        "engine_version": "20.10.24",
        "capacity": {"cpu": 2000, "memory": 25_000_000_000},
        "labels": {"zone": "a"},
        "images": ["berth-test/busybox:1"],
    }
    status = status_frame(
        7, [ReplicaStatus("web-7k2pq", "default", "ab12", Phase.RUNNING, started_at=STARTED)]
    )
    assert status == {
        "type": "status",
        "generation": 7,
        "full": True,
        "replicas": [
            {
                "name": "web-7k2pq",
                "namespace": "default",
                "container_id": "ab12",
                "phase": "Running",
                "exit_code": None,
                "message": "",
                "restart_count": 0,
                "started_at": "2026-11-22T11:00:00Z",
                "finished_at": None,
            }
        ],
    }
    json.dumps(status)  # serialisable as is
