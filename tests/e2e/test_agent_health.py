"""The agent's probes, restart policies and graceful stops, against a real Docker engine.

The agent is the real one (`python -m agent` inside the host's network namespace, so it
reaches container addresses on that engine's bridge, as on a server). Its session peer is
a stub that speaks the agent protocol (tests/harness/stubplane.py): it sends the desired
fields of issue 4 (probes, restart policy, termination grace) that the control plane does
not send yet, and records every status frame the agent sends, with its arrival time.
"""

from __future__ import annotations

import time
from datetime import datetime

import docker.errors
import pytest

from agent.runtime.docker import parse_engine_time
from devtools.images import CHANGES, busybox_rootfs_tar
from tests.harness.hosts import TEST_IMAGE
from tests.harness.stubplane import StubControlPlane, write_credential
from tests.harness.waiting import wait_for

HEALTH_IMAGE = "berth-test/busybox-health:1"
# Exits at once on SIGTERM (a shell as PID 1 ignores it unless it traps it).
GRACEFUL = "trap 'exit 0' TERM; while true; do sleep 1; done"


def entry(name: str, script: str, image: str = TEST_IMAGE, **fields) -> dict:
    """A desired entry as the control plane sends it (protocol section 2), plus `fields`."""
    return {
        "name": name,
        "namespace": "default",
        "deployment": "health",
        "revision": "r1",
        "image": image,
        "command": ["sh", "-c", script],
        "env": {},
        "ports": [],
        "resources": {"cpu_millis": None, "memory_bytes": None},
        **fields,
    }


@pytest.fixture
def node(hosts):
    """(host, stub) with the real agent of hosts[0] connected to the stub."""
    host = hosts[0]
    plane = StubControlPlane(host.gateway, node=host.name).start()
    try:
        write_credential(host.state_dir, plane.url, host.name)
        host.start_agent(plane.url, None)
        wait_for(lambda: plane.hellos, 30, lambda: f"the agent's hello; agent: {host.agent_output(20)}")
        yield host, plane
    finally:
        host.kill_agent()
        plane.stop()


def waiter(host, plane):
    def wait(condition, what, timeout=30.0):
        return wait_for(
            condition,
            timeout,
            lambda: f"{what}; last status: {plane.last_status()}; agent: {host.agent_output(25)}",
            interval=0.05,
            max_interval=0.2,
        )

    return wait


def container_of(host, name):
    try:
        return host.docker.containers.get(f"default_{name}")
    except docker.errors.NotFound:
        return None


def test_http_readiness_probe_gates_ready_until_the_server_answers(node):
    host, plane = node
    wait = waiter(host, plane)
    serve = "sleep 3 && mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"
    probe = {"http_get": {"port": 8080, "path": "/index.html"}, "period_seconds": 1, "failure_threshold": 1}
    plane.set_desired([entry("web", serve, readiness_probe=probe)])

    wait(lambda: plane.replica("web", "phase") == "Running", "web Running")
    running = plane.replica("web")
    assert running["ready"] is False and running["ready_since"] is None

    wait(lambda: plane.replica("web", "ready"), "web ready", timeout=20)
    ready = plane.replica("web")
    assert ready["message"] == "" and ready["health"] is None
    started = ready["started_at"]
    # Not ready while httpd slept: the agent probed and was refused, and said so.
    refused = [e["message"] for _, e in plane.history("web") if e["phase"] == "Running" and not e["ready"]]
    assert "readiness probe failed: HTTP GET :8080/index.html: connection refused" in refused
    # Ready no earlier than the server could answer (3 s after the start), at one-second granularity.
    assert ready["ready_since"] >= started
    seconds = _seconds(ready["ready_since"]) - _seconds(started)
    assert seconds >= 3, (started, ready["ready_since"])

    # The page goes away: HTTP 404 is a failure, and readiness goes off again.
    host.docker.containers.get(ready["container_id"]).exec_run(["rm", "/www/index.html"])
    wait(lambda: plane.replica("web", "ready") is False, "web not ready after its page was removed")
    assert plane.replica("web", "message") == "readiness probe failed: HTTP GET :8080/index.html: status 404"
    assert plane.replica("web", "ready_since") is None
    assert plane.replica("web", "restart_count") == 0  # readiness never restarts anything


def test_failing_exec_liveness_probe_restarts_the_container_in_place(node):
    host, plane = node
    wait = waiter(host, plane)
    script = f"touch /tmp/alive; {GRACEFUL}"
    probe = {"exec": {"command": ["cat", "/tmp/alive"]}, "period_seconds": 1, "failure_threshold": 2}
    plane.set_desired([entry("live", script, liveness_probe=probe, termination_grace_seconds=5)])
    wait(lambda: plane.replica("live", "phase") == "Running", "live Running")
    first = plane.replica("live")
    assert first["ready"] is True  # no readiness probe: ready once running

    host.docker.containers.get(first["container_id"]).exec_run(["rm", "/tmp/alive"])
    wait(lambda: plane.replica("live", "restart_count") == 1, "a liveness restart", timeout=30)
    wait(lambda: plane.replica("live", "phase") == "Running", "live Running again")
    after = plane.replica("live")
    assert after["container_id"] == first["container_id"]  # restarted in place, not re-created
    assert after["started_at"] >= first["started_at"]
    assert after["last_exit_code"] == 0  # its TERM trap exited 0
    messages = [e["message"] for _, e in plane.history("live")]
    failed = "liveness probe failed 2 times: exec cat /tmp/alive: exit code 1"
    assert any(m.startswith(failed) for m in messages), messages
    # Readiness went off before the stop: a frame says not ready while it still ran.
    assert any(
        e["phase"] == "Running" and not e["ready"] and e["message"] == f"{failed}; restarting"
        for _, e in plane.history("live")
    ), messages
    engine = host.docker.containers.get(first["container_id"])
    assert engine.status == "running" and engine.attrs["RestartCount"] == 0  # the agent restarted it
    # The restarted run created /tmp/alive again: the probe passes and no second restart follows.
    wait(lambda: plane.replica("live", "ready"), "live ready again")
    assert plane.replica("live", "restart_count") == 1


def test_restart_policies_decide_which_exits_are_restarted(node):
    host, plane = node
    wait = waiter(host, plane)
    plane.set_desired(
        [
            entry("never-fails", "exit 3", restart_policy="never"),
            entry("onfail-ok", "exit 0", restart_policy="on-failure"),
            entry("onfail-bad", "exit 3", restart_policy="on-failure"),
            entry("always-ok", "exit 0"),  # the default: always
        ]
    )
    # The restarted ones come back after the 10 s back-off...
    wait(
        lambda: (
            plane.replica("onfail-bad", "restart_count") == 1
            and plane.replica("always-ok", "restart_count") == 1
        ),
        "onfail-bad and always-ok restarted",
        timeout=40,
    )
    # ...and by then the other two were left alone, each saying why.
    never = plane.replica("never-fails")
    assert (never["phase"], never["exit_code"], never["restart_count"]) == ("Failed", 3, 0)
    assert never["message"] == "exited with code 3; restart policy never: not restarting"
    ok = plane.replica("onfail-ok")
    assert (ok["phase"], ok["exit_code"], ok["restart_count"]) == ("Succeeded", 0, 0)
    assert ok["message"] == "exited with code 0; restart policy on-failure: not restarting"
    # The engine agrees: they exited before the others were restarted, and were not started since.
    restarted_at = parse_engine_time(container_of(host, "onfail-bad").attrs["State"]["StartedAt"])
    for name in ("never-fails", "onfail-ok"):
        state = container_of(host, name).attrs["State"]
        assert state["Status"] == "exited"
        assert parse_engine_time(state["FinishedAt"]) < restarted_at
        runs = {e["started_at"] for _, e in plane.history(name)} - {None}
        assert runs == {plane.replica(name, "started_at")}  # one run only
    assert plane.replica("onfail-bad", "last_exit_code") == 3


def test_stop_honours_the_termination_grace(node):
    host, plane = node
    wait = waiter(host, plane)
    plane.set_desired(
        [
            entry("polite", GRACEFUL, termination_grace_seconds=30),
            entry("stubborn", "trap '' TERM; while true; do sleep 1; done", termination_grace_seconds=3),
        ]
    )
    wait(
        lambda: plane.replica("polite", "ready") and plane.replica("stubborn", "ready"),
        "both running and ready",
    )
    assert container_of(host, "polite").attrs["Config"]["StopTimeout"] == 30

    gone = {}
    asked = time.monotonic()
    plane.set_desired([])

    def both_gone():
        for name in ("polite", "stubborn"):
            if name not in gone and container_of(host, name) is None:
                gone[name] = time.monotonic() - asked
        return len(gone) == 2

    wait(both_gone, "both containers removed", timeout=30)
    # The polite one exits on SIGTERM, far within its 30 s; the stubborn one is killed after 3 s.
    assert gone["polite"] < 3, gone
    assert 3 <= gone["stubborn"] < 8, gone
    # Readiness went off (a frame said so) while each container still ran, before its SIGTERM.
    for name in ("polite", "stubborn"):
        assert any(
            e["phase"] == "Running" and not e["ready"] and e["message"].startswith("stopping:")
            for _, e in plane.history(name)
        ), plane.history(name)[-3:]


def test_docker_healthcheck_gates_readiness_and_unhealthy_restarts(node):
    host, plane = node
    wait = waiter(host, plane)
    host.docker.api.import_image_from_data(
        busybox_rootfs_tar(),
        repository=HEALTH_IMAGE.split(":")[0],
        tag="1",
        changes=[*CHANGES, "HEALTHCHECK --interval=1s --timeout=2s --retries=1 CMD test -f /tmp/healthy"],
    )
    script = f"sleep 2; touch /tmp/healthy; {GRACEFUL}"
    plane.set_desired([entry("checked", script, image=HEALTH_IMAGE, termination_grace_seconds=5)])

    wait(lambda: plane.replica("checked", "phase") == "Running", "checked Running")
    assert plane.replica("checked", "ready") is False
    wait(lambda: plane.replica("checked", "health") == "healthy", "healthy", timeout=20)
    wait(lambda: plane.replica("checked", "ready"), "ready once healthy")
    starting = [e for _, e in plane.history("checked") if e["health"] == "starting"]
    assert starting and not any(e["ready"] for e in starting)

    # Unhealthy, and no liveness probe: the agent restarts it (Docker Swarm's behaviour).
    container = host.docker.containers.get(plane.replica("checked", "container_id"))
    container.exec_run(["rm", "/tmp/healthy"])
    wait(lambda: plane.replica("checked", "restart_count") == 1, "a restart for unhealthy", timeout=30)
    assert any(e["health"] == "unhealthy" and not e["ready"] for _, e in plane.history("checked")), (
        plane.history("checked")[-5:]
    )
    wait(lambda: plane.replica("checked", "ready"), "healthy and ready again", timeout=20)
    assert plane.replica("checked", "restart_count") == 1


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
