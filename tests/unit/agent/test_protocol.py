"""The wire format: frames from the protocol document parse, malformed ones are refused whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from agent.probes import Exec, HttpGet, Probe, TcpSocket
from agent.protocol import (
    DesiredSet,
    ProtocolError,
    Settings,
    UnknownFrame,
    Welcome,
    complete_set,
    hello_frame,
    parse_frame,
    status_frame,
)
from agent.replicas import Health, PortMapping, Resources, RestartPolicy
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


def test_absent_health_fields_mean_defaults():
    (replica,) = parse_frame(json.dumps(DOC_DESIRED)).replicas
    assert replica.restart_policy == RestartPolicy.ALWAYS
    assert replica.termination_grace_seconds == 10
    assert replica.readiness_probe is None and replica.liveness_probe is None


HEALTH_FIELDS = {
    "restart_policy": "on-failure",
    "termination_grace_seconds": 30,
    "readiness_probe": {"http_get": {"path": "/healthz?full=1", "port": 8080}, "period_seconds": 2},
    "liveness_probe": {
        "tcp_socket": {"port": 6379},
        "initial_delay_seconds": 5,
        "period_seconds": 3,
        "timeout_seconds": 2,
        "failure_threshold": 4,
        "success_threshold": 1,
    },
}


def test_health_fields_parse():
    entry = {**DOC_DESIRED["replicas"][0], **HEALTH_FIELDS}
    (replica,) = parse_frame(json.dumps({**DOC_DESIRED, "replicas": [entry]})).replicas
    assert replica.restart_policy == RestartPolicy.ON_FAILURE
    assert replica.termination_grace_seconds == 30
    assert replica.readiness_probe == Probe(HttpGet(port=8080, path="/healthz?full=1"), period_seconds=2)
    assert replica.liveness_probe == Probe(
        TcpSocket(port=6379),
        initial_delay_seconds=5,
        period_seconds=3,
        timeout_seconds=2,
        failure_threshold=4,
        success_threshold=1,
    )


def test_exec_probe_and_defaults_of_a_probe():
    entry = {
        **DOC_DESIRED["replicas"][0],
        "restart_policy": "never",
        "termination_grace_seconds": 0,
        "readiness_probe": None,
        "liveness_probe": {"exec": {"command": ["cat", "/tmp/alive"]}},
    }
    (replica,) = parse_frame(json.dumps({**DOC_DESIRED, "replicas": [entry]})).replicas
    assert replica.restart_policy == RestartPolicy.NEVER
    assert replica.termination_grace_seconds == 0
    assert replica.readiness_probe is None
    probe = replica.liveness_probe
    assert probe == Probe(Exec(("cat", "/tmp/alive")))
    assert (probe.initial_delay_seconds, probe.period_seconds, probe.timeout_seconds) == (0, 10, 1)
    assert (probe.failure_threshold, probe.success_threshold) == (3, 1)
    http = parse_frame(
        json.dumps(
            {
                **DOC_DESIRED,
                "replicas": [{**DOC_DESIRED["replicas"][0], "readiness_probe": {"http_get": {"port": 80}}}],
            }
        )
    ).replicas[0]
    assert http.readiness_probe.handler == HttpGet(port=80, path="/")


def _probe(**kw):
    return {"http_get": {"port": 8080}, **kw}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"restart_policy": "sometimes"}, r"restart_policy must be one of always, on-failure, never"),
        ({"restart_policy": 1}, "restart_policy"),
        ({"termination_grace_seconds": -1}, "termination_grace_seconds"),
        ({"termination_grace_seconds": 3601}, "termination_grace_seconds"),
        ({"termination_grace_seconds": 1.5}, "termination_grace_seconds"),
        ({"termination_grace_seconds": True}, "termination_grace_seconds"),
        ({"readiness_probe": "GET /"}, r"readiness_probe must be null or an object"),
        ({"readiness_probe": {}}, r"readiness_probe must have exactly one of http_get, tcp_socket, exec"),
        (
            {"liveness_probe": {"http_get": {"port": 80}, "tcp_socket": {"port": 80}}},
            r"liveness_probe must have exactly one",
        ),
        ({"readiness_probe": {"http_get": {"port": 0}}}, r"readiness_probe\.http_get\.port"),
        ({"readiness_probe": {"http_get": {"port": "80"}}}, r"readiness_probe\.http_get\.port"),
        (
            {"readiness_probe": {"http_get": {"port": 80, "path": "healthz"}}},
            r"readiness_probe\.http_get\.path",
        ),
        ({"readiness_probe": {"http_get": {"port": 80, "path": "/a b"}}}, r"readiness_probe\.http_get\.path"),
        (
            {"readiness_probe": {"http_get": {"port": 80, "path": "/\r\nX: 1"}}},
            r"readiness_probe\.http_get\.path",
        ),
        ({"readiness_probe": {"http_get": []}}, r"readiness_probe\.http_get must be an object"),
        ({"liveness_probe": {"tcp_socket": {"port": 65536}}}, r"liveness_probe\.tcp_socket\.port"),
        ({"liveness_probe": {"exec": {"command": []}}}, r"liveness_probe\.exec\.command"),
        ({"liveness_probe": {"exec": {"command": "true"}}}, r"liveness_probe\.exec\.command"),
        ({"liveness_probe": {"exec": {"command": ["sh", 1]}}}, r"liveness_probe\.exec\.command"),
        ({"liveness_probe": _probe(initial_delay_seconds=-1)}, r"liveness_probe\.initial_delay_seconds"),
        ({"liveness_probe": _probe(period_seconds=0)}, r"liveness_probe\.period_seconds"),
        ({"liveness_probe": _probe(timeout_seconds=0)}, r"liveness_probe\.timeout_seconds"),
        ({"liveness_probe": _probe(failure_threshold=0)}, r"liveness_probe\.failure_threshold"),
        ({"readiness_probe": _probe(success_threshold=0)}, r"readiness_probe\.success_threshold"),
        ({"readiness_probe": _probe(period_seconds=2.5)}, r"readiness_probe\.period_seconds"),
        ({"readiness_probe": _probe(period_seconds=False)}, r"readiness_probe\.period_seconds"),
        ({"readiness_probe": _probe(period_seconds=2**31)}, r"readiness_probe\.period_seconds"),
    ],
)
def test_a_bad_health_field_rejects_the_whole_frame(change, field):
    good = {**DOC_DESIRED["replicas"][0], "name": "good-one"}
    entry = {**DOC_DESIRED["replicas"][0], **change}
    with pytest.raises(ProtocolError, match=r"desired\.replicas\[1\]\." + field):
        parse_frame(json.dumps({**DOC_DESIRED, "replicas": [good, entry]}))


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


def partial(names, replicas, **extra):
    return json.dumps(
        {"type": "desired", "generation": 9, "partial": True, "names": names, "replicas": replicas, **extra}
    )


def test_a_partial_frame_is_completed_from_the_entries_the_agent_has():
    carried = {**DOC_DESIRED["replicas"][0], "name": "new-1"}
    frame = parse_frame(partial([["default", "web-7k2pq"], ["default", "new-1"]], [carried]))
    assert frame.names == (("default", "web-7k2pq"), ("default", "new-1"))
    assert [r.name for r in frame.replicas] == ["new-1"]
    known = parse_frame(json.dumps(DOC_DESIRED)).replicas[0]
    replicas, missing = complete_set(frame, {known.key: known}.get)
    assert [r.name for r in replicas] == ["web-7k2pq", "new-1"] and missing == []
    replicas, missing = complete_set(frame, {}.get)  # an agent that lost its set
    assert missing == [("default", "web-7k2pq")]
    full = parse_frame(json.dumps(DOC_DESIRED))
    assert full.names is None and complete_set(full, {}.get) == (list(full.replicas), [])


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (partial("x", []), r"desired\.names must be a list"),
        (partial([["default"]], []), r"desired\.names\[0\] must be a \[namespace, name\] pair"),
        (partial([["default", "Bad_Name"]], []), r"desired\.names\[0\]\[1\] must be a DNS-1123 label"),
        (partial([["default", "a"], ["default", "a"]], []), "lists a replica twice"),
        (partial([], [DOC_DESIRED["replicas"][0]]), "default/web-7k2pq, which desired.names does not list"),
        (partial([], [], partial="yes"), r"desired\.partial must be true or false"),
    ],
)
def test_a_malformed_partial_frame_is_refused_whole(text, field):
    with pytest.raises(ProtocolError, match=field):
        parse_frame(text)


def test_welcome_and_unknown_frames():
    assert parse_frame('{"type": "welcome", "node": "h1", "heartbeat_interval": 2.0}') == Welcome("h1", 2.0)
    assert parse_frame('{"type": "logs.subscribe"}') == UnknownFrame("logs.subscribe")
    with pytest.raises(ProtocolError):
        parse_frame("not json")
    with pytest.raises(ProtocolError):
        parse_frame('{"type": "welcome", "node": "h1", "heartbeat_interval": 0}')


def test_settings_frame():
    assert parse_frame('{"type": "settings", "heartbeat_interval": 3.3}') == Settings(3.3)
    assert parse_frame('{"type": "settings"}') == Settings(None)  # nothing to change
    for bad in ("0", "-1", "true", '"2"', "4000"):
        with pytest.raises(ProtocolError, match=r"settings\.heartbeat_interval"):
            parse_frame(json.dumps({"type": "settings", "heartbeat_interval": json.loads(bad)}))


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
        "features": ["desired.partial", "settings"],
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
                "ready": False,
                "ready_since": None,
                "health": None,
                "last_exit_code": None,
            }
        ],
    }
    json.dumps(status)  # serialisable as is


def test_status_frame_carries_readiness_health_and_last_exit_code():
    status = ReplicaStatus(
        "web-7k2pq",
        "default",
        "ab12",
        Phase.RUNNING,
        restart_count=3,
        started_at=STARTED,
        ready=True,
        ready_since=STARTED + 4,
        health=Health.HEALTHY,
        last_exit_code=137,
    )
    (entry,) = status_frame(7, [status])["replicas"]
    assert (entry["ready"], entry["ready_since"], entry["health"]) == (
        True,
        "2026-11-22T11:00:04Z",
        "healthy",
    )
    assert (entry["restart_count"], entry["last_exit_code"], entry["exit_code"]) == (3, 137, None)
    json.dumps(entry)


def test_a_status_frame_reuses_the_entry_of_an_unchanged_status():
    cache = {}
    a = ReplicaStatus("a", "default", "ab12", Phase.RUNNING, started_at=STARTED)
    b = ReplicaStatus("b", "default", None, Phase.STARTING, message="creating")
    first = status_frame(7, [a, b], cache)["replicas"]
    b_running = ReplicaStatus("b", "default", "cd34", Phase.RUNNING, started_at=STARTED)
    second = status_frame(8, [a, b_running], cache)["replicas"]
    assert second[0] is first[0]  # a: the same status, the same entry
    assert second[1] is not first[1]
    assert (second[1]["phase"], second[1]["container_id"]) == ("Running", "cd34")
    assert second == status_frame(8, [a, b_running])["replicas"]  # what it would be without the cache
    assert set(cache) == {("default", "a"), ("default", "b")}
    status_frame(9, [a], cache)
    assert set(cache) == {("default", "a")}  # b went
