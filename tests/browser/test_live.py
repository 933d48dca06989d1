"""A person watching live: logs appearing as a container writes them (one replica, and three
merged), a web terminal running a command, a chart being drawn, an event arriving without
a reload."""

from __future__ import annotations

import time
import uuid

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_dashboard import cluster, log_in  # noqa: F401 - `cluster` is a fixture
from tests.e2e.cluster import IMAGE, SLEEPER
from tests.harness.waiting import wait_for

GREETER = ["sh", "-c", "echo \"hello from $HOSTNAME\"; trap 'exit 0' TERM; sleep 3600 & wait"]


def deploy(api, name, replicas, command):
    body = {"name": name, "image": IMAGE, "replicas": replicas, "command": command}
    assert api.post("/api/v1/namespaces/default/deployments/", json=body).status_code == 201

    def all_running():
        items = api.get(f"/api/v1/namespaces/default/deployments/{name}/replicas/").json()["results"]
        return items if len(items) == replicas and all(r["phase"] == "Running" for r in items) else None

    return wait_for(all_running, 30, f"{replicas} Running replicas of {name}")


def container_of(hosts, replica):
    for host in hosts:
        for container in host.berth_containers(all=False):
            if container.labels.get("berth.replica") == replica["name"]:
                return host, container
    raise AssertionError(f"no container for {replica['name']}")


def test_logs_appear_live_and_three_replicas_merge(page, control_plane, cluster, api):  # noqa: F811
    log_in(page, control_plane)
    name = f"live-{uuid.uuid4().hex[:6]}"
    replicas = deploy(api, name, 3, GREETER)
    page.goto(control_plane.base_url + f"/namespaces/default/deployments/{name}/")
    # The merged view: a line of each of the three replicas, each marked with its replica.
    page.wait_for_function(
        "() => new Set([...document.querySelectorAll('[data-logs-lines] .line')]"
        ".map(l => l.dataset.replica)).size === 3",
        timeout=15_000,
    )
    shown = page.eval_on_selector_all(
        "[data-logs-lines] .line", "ls => ls.map(l => [l.dataset.replica, l.textContent])"
    )
    assert {r for r, _ in shown} == {r["name"] for r in replicas}
    assert all("hello from" in text for _, text in shown)
    colours = page.eval_on_selector_all(
        "[data-logs-lines] .who", "ws => [...new Set(ws.map(w => w.style.color))]"
    )
    assert len(colours) == 3  # told apart by colour

    # A unique marker written now appears in the open view within a second.
    host, container = container_of(cluster, replicas[1])
    marker = f"marker-{uuid.uuid4().hex}"
    exec_id = host.docker.api.exec_create(container.id, ["sh", "-c", f"echo {marker} > /proc/1/fd/1"])["Id"]
    written = time.monotonic()
    host.docker.api.exec_start(exec_id)
    page.wait_for_function(
        "(m) => [...document.querySelectorAll('[data-logs-lines] .line')]"
        ".some(l => l.textContent.includes(m))",
        arg=marker,
        timeout=5_000,
    )
    latency = time.monotonic() - written
    print(f"marker shown {latency * 1000:.0f} ms after it was written")
    assert latency < 1.0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "deployment-logs.png"), full_page=True)


def test_terminal_chart_and_events_without_reload(page, control_plane, cluster, api):  # noqa: F811
    log_in(page, control_plane)
    name = f"term-{uuid.uuid4().hex[:6]}"
    replica = deploy(api, name, 1, SLEEPER)[0]
    page.goto(control_plane.base_url + f"/namespaces/default/replicas/{replica['name']}/")
    page.evaluate("window.__berthNoReload = true")
    page.select_option("[data-terminal-shell]", "sh")
    page.click("[data-terminal-open]")
    page.wait_for_selector(".terminal-card[data-state=open]", timeout=15_000)
    page.click(".terminal .xterm")
    page.keyboard.type("echo $((6*7))")
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => document.querySelector('.terminal .xterm-rows').textContent.includes('42')", timeout=10_000
    )
    rows = page.eval_on_selector(
        ".terminal .xterm-rows", "r => [...r.children].map(c => c.textContent.trim())"
    )
    assert "42" in rows, rows

    # The chart: the agent samples every 5 s; points are drawn as they come.
    page.wait_for_function(
        "() => Number(document.querySelector('.metrics-card').dataset.points || 0) >= 2", timeout=30_000
    )
    assert page.locator(".metrics-card [data-chart=cpu] canvas").count() == 1
    page.screenshot(path=str(ARTIFACTS / "replica-page.png"), full_page=True)

    # The overview's events feed: cordoning a node shows up without a reload.
    page.goto(control_plane.base_url + "/")
    page.wait_for_selector("body[data-live-state=open]")
    page.evaluate("window.__berthNoReload = true")
    find = (
        "(n) => [...document.querySelectorAll('#cluster-events li')]"
        ".filter(li => li.dataset.reason === 'Cordoned' && li.textContent.includes('Node/' + n))"
        ".map(li => li.textContent).join('|')"
    )
    before = page.evaluate(find, cluster[1].name)  # an earlier cordon folds into the same row
    assert api.post(f"/api/v1/nodes/{cluster[1].name}/cordon").status_code == 200
    try:
        page.wait_for_function(
            f"([n, before]) => {{ const now = ({find})(n); return now !== '' && now !== before; }}",
            arg=[cluster[1].name, before],
            timeout=10_000,
        )
        assert page.evaluate("window.__berthNoReload") is True
    finally:
        api.post(f"/api/v1/nodes/{cluster[1].name}/uncordon")
