"""A person in Chromium: log in, create a deployment from the form, watch it come up live."""

from __future__ import annotations

import uuid

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.harness.waiting import wait_for


@pytest.fixture
def cluster(control_plane, hosts, api):
    token = control_plane.new_join_token()
    for host in hosts:
        host.start_agent(control_plane.agent_url_for(host), token)
    wait_for(
        lambda: all(api.get(f"/api/v1/nodes/{h.name}/").json().get("status") == "Ready" for h in hosts),
        30,
        "both nodes Ready",
    )
    yield hosts
    for deployment in api.get("/api/v1/namespaces/default/deployments/").json()["results"]:
        api.delete(f"/api/v1/namespaces/default/deployments/{deployment['name']}/")


def log_in(page, control_plane):
    page.goto(control_plane.base_url + "/deployments/")
    assert "/login/" in page.url  # the dashboard asks who you are first
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", control_plane.admin_password)
    page.click("button[type=submit]")
    page.wait_for_url("**/deployments/")


def phases(page):
    return page.eval_on_selector_all("#replicas-table [data-phase]", "nodes => nodes.map(n => n.textContent)")


def test_create_from_the_form_and_watch_replicas_turn_running(page, control_plane, cluster, api):
    log_in(page, control_plane)
    name = f"ui-{uuid.uuid4().hex[:6]}"
    page.click("text=New deployment")
    page.fill("input[name=name]", name)
    page.fill("input[name=image]", "berth-test/busybox:1")
    page.fill("input[name=replicas]", "2")
    page.fill("input[name=command]", "sh -c \"trap 'exit 0' TERM; sleep 3600 & wait\"")
    page.fill("input[name=memory]", "32Mi")
    page.click("button:has-text('Create')")
    page.wait_for_url(f"**/namespaces/default/deployments/{name}/")
    # Mark this document: a reload or navigation would lose the mark.
    page.evaluate("window.__berthNoReload = true")
    expected = 2
    if phases(page) == ["Running", "Running"]:
        # Both started before the page's first render (a fast moment of the machine): watch
        # a third one come up live instead, so that the test still sees a change arrive.
        response = api.patch(f"/api/v1/namespaces/default/deployments/{name}/", json={"replicas": 3})
        assert response.status_code == 200, response.text
        expected = 3

    page.wait_for_function(
        """expected => {
            const cells = [...document.querySelectorAll('#replicas-table [data-phase]')];
            return cells.length === expected && cells.every(c => c.textContent === 'Running');
        }""",
        arg=expected,
        timeout=20_000,
    )
    assert page.evaluate("window.__berthNoReload") is True  # seen live, not by reloading
    # The ready count is the deployment's status, written by the controller just after the phases.
    page.wait_for_function(
        "expected => document.querySelector('#ready-count').textContent === String(expected)",
        arg=expected,
        timeout=10_000,
    )
    assert page.get_attribute("body", "data-live-state") == "open"
    nodes = page.eval_on_selector_all(
        "#replicas-table tbody tr td:nth-child(2)", "n => n.map(x => x.textContent)"
    )
    assert sorted(set(nodes)) == ["h1", "h2"]  # spread over both
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "deployment-detail.png"), full_page=True)
    page.goto(control_plane.base_url + "/")
    page.wait_for_selector("body[data-live-state=open]")
    page.screenshot(path=str(ARTIFACTS / "overview.png"), full_page=True)


def test_the_form_names_what_is_wrong_and_keeps_what_was_typed(page, control_plane, cluster):
    log_in(page, control_plane)
    page.goto(control_plane.base_url + "/deployments/new/")
    page.fill("input[name=name]", "Bad_Name")
    page.fill("input[name=image]", "berth-test/busybox:1")
    page.fill("input[name=cpu]", "lots")
    page.fill("textarea[name=ports]", "http:80")
    page.click("button:has-text('Create')")
    errors = page.locator(".error").all_text_contents()
    assert any("DNS-1123" in e for e in errors), errors
    assert any("HOST:CONTAINER" in e for e in errors), errors
    assert page.input_value("input[name=image]") == "berth-test/busybox:1"
    page.fill("textarea[name=ports]", "")
    page.click("button:has-text('Create')")
    errors = page.locator(".error").all_text_contents()
    assert any("not a quantity" in e for e in errors), errors
