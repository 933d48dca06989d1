"""A person in Chromium looks after a node: cordons it, labels it, and sees it change live."""

from __future__ import annotations

import pytest

from tests.browser.conftest import ARTIFACTS
from tests.browser.test_dashboard import cluster, log_in  # noqa: F401  (cluster is a fixture)


@pytest.fixture
def node_h1(cluster, api):  # noqa: F811
    """h1, Ready, with whatever this test sets on it taken off again afterwards."""
    yield "h1"
    api.patch(
        "/api/v1/nodes/h1/", json={"labels": {}, "taints": [], "unschedulable": False}
    ).raise_for_status()


def label_rows(page) -> dict[str, list[str]]:
    return page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('#node-labels tr[data-label]')]
             .map(tr => [tr.dataset.label, [...tr.cells].slice(1).map(c => c.textContent)]))"""
    )


def test_cordon_and_label_a_node_from_its_page(page, control_plane, api, node_h1):
    log_in(page, control_plane)
    page.goto(control_plane.base_url + "/nodes/")
    page.click("#nodes-table a:text-is('h1')")
    page.wait_for_url("**/nodes/h1/")
    page.wait_for_selector("body[data-live-state=open]")
    assert page.text_content("#node-status") == "Ready"
    assert not page.is_visible("#node-cordoned")

    # Cordon with the button: the page comes back saying so.
    page.click("#cordon-form button")
    page.wait_for_url("**/nodes/h1/")
    assert "cordoned" in page.text_content(".flash")
    assert page.is_visible("#node-cordoned") and page.is_visible("#uncordon-form")
    assert not page.is_visible("#cordon-form")
    assert api.get("/api/v1/nodes/h1/").json()["unschedulable"] is True

    # Uncordoned elsewhere (the API): this page follows without a reload.
    page.wait_for_selector("body[data-live-state=open]")
    page.evaluate("window.__berthNoReload = true")
    api.post("/api/v1/nodes/h1/uncordon/").raise_for_status()
    page.wait_for_selector("#node-cordoned", state="hidden", timeout=10_000)
    assert page.is_visible("#cordon-form")
    assert page.text_content("#node-scheduling") == "replicas may be placed here"
    assert page.evaluate("window.__berthNoReload") is True

    # A label through the form is listed as the user's.
    page.fill("textarea[name=labels]", "rack=r1")
    page.click("button:has-text('Save labels')")
    page.wait_for_url("**/nodes/h1/")
    assert label_rows(page)["rack"] == ["r1", "user"]

    # A bad one is refused next to the field, and what was typed stays.
    page.fill("textarea[name=labels]", "rack=r1\nbad key=1")
    page.click("button:has-text('Save labels')")
    error = page.locator("textarea[name=labels] ~ .error").all_text_contents()
    assert any("'bad key' is not a valid label key" in e for e in error), error
    assert page.input_value("textarea[name=labels]") == "rack=r1\nbad key=1"
    assert api.get("/api/v1/nodes/h1/").json()["user_labels"] == {"rack": "r1"}

    # Taints and labels changed elsewhere show up live too.
    page.wait_for_selector("body[data-live-state=open]")
    page.evaluate("window.__berthNoReload = true")
    api.patch(
        "/api/v1/nodes/h1/",
        json={
            "labels": {"rack": "r2"},
            "taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}],
        },
    ).raise_for_status()
    page.wait_for_function(
        """() => document.querySelector('#node-taints').textContent.includes('dedicated=gpu:NoSchedule')
             && document.querySelector('#node-labels tr[data-label=rack] td:nth-child(2)')
                  .textContent === 'r2'""",
        timeout=10_000,
    )
    assert page.evaluate("window.__berthNoReload") is True
    events = page.text_content("#node-events")
    assert "Cordoned" in events and "LabelsChanged" in events
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "node-detail.png"), full_page=True)


def test_the_nodes_table_shows_a_cordon_live(page, control_plane, api, node_h1):
    log_in(page, control_plane)
    page.goto(control_plane.base_url + "/nodes/")
    page.wait_for_selector("body[data-live-state=open]")
    page.evaluate("window.__berthNoReload = true")
    api.post("/api/v1/nodes/h1/cordon/").raise_for_status()
    page.wait_for_selector("#nodes-table tr[data-node=h1] .badge.Cordoned", timeout=10_000)
    assert not page.is_visible("#nodes-table tr[data-node=h2] .badge.Cordoned")
    assert page.get_attribute("#nodes-table tr[data-node=h1] a", "href") == "/nodes/h1/"
    assert page.evaluate("window.__berthNoReload") is True
