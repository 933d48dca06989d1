"""The node page and its forms: they go through the API's validation and the same service."""

import pytest

from nodes.models import Node
from orchestrator.models import Event, Namespace, Replica


@pytest.fixture
def node(ready_nodes):
    (node,) = ready_nodes("h1")
    Node.objects.filter(pk=node.pk).update(agent_labels={"zone": "a"})
    node.refresh_from_db()
    return node


def test_the_page_shows_labels_by_source_taints_replicas_and_events(browser, node):
    from orchestrator import services

    deployment = services.do_create_deployment(
        Namespace.objects.get(name="default"), {"name": "web", "image": "busybox:1"}, None
    )
    Replica.objects.create(
        namespace=deployment.namespace,
        deployment=deployment,
        name="web-abcde",
        node=node,
        phase=Replica.Phase.RUNNING,
        revision="r",
        template={},
    )
    browser.post("/nodes/h1/labels/", {"labels": "zone=b\ndisk=ssd"})
    browser.post("/nodes/h1/taints/", {"taints": "dedicated=gpu:NoSchedule"})
    page = browser.get("/nodes/h1/").content.decode()
    assert 'data-label="zone"' in page and "agent said a" in page
    assert "dedicated=gpu:NoSchedule" in page
    assert 'href="/namespaces/default/deployments/web/"' in page and "web-abcde" in page
    assert "LabelsChanged" in page and "TaintsChanged" in page and "by alice" in page
    assert browser.get("/nodes/nope/").status_code == 404
    assert 'href="/nodes/h1/"' in browser.get("/nodes/").content.decode()


def test_cordon_and_uncordon_from_the_page(browser, node):
    response = browser.post("/nodes/h1/cordon/", follow=True)
    node.refresh_from_db()
    assert node.unschedulable
    assert "cordoned: no new replicas will be placed on it" in response.content.decode()
    browser.post("/nodes/h1/uncordon/")
    node.refresh_from_db()
    assert not node.unschedulable
    assert list(Event.objects.filter(object_uid=node.uid).values_list("reason", flat=True)) == [
        "Uncordoned",
        "Cordoned",
    ]


@pytest.mark.parametrize(
    ("url", "field", "typed", "words"),
    [
        ("/nodes/h1/labels/", "labels", "zone", "is not key=value"),
        ("/nodes/h1/labels/", "labels", "bad key=1", "not a valid label key"),
        ("/nodes/h1/labels/", "labels", "a=1\na=2", "given twice"),
        ("/nodes/h1/taints/", "taints", "dedicated=gpu", "is not key=value:Effect"),
        ("/nodes/h1/taints/", "taints", "a:NoSchedule\nb=1:Never", "line 2 (b=1:Never): effect"),
        ("/nodes/h1/taints/", "taints", "a:NoSchedule\na=2:NoSchedule", "more than one taint with key"),
    ],
)
def test_form_errors_are_shown_by_the_field_and_keep_the_input(browser, node, url, field, typed, words):
    response = browser.post(url, {field: typed})
    assert response.status_code == 400
    assert words in " ".join(response.context["errors"][field])
    assert response.context["form"][field] == typed
    node.refresh_from_db()
    assert (node.user_labels, node.taints, node.resource_version) == ({}, [], 0)


def test_reserved_from_the_page(browser, node):
    response = browser.post("/nodes/h1/reserved/", {"cpu": "lots", "memory": "1Gi"})
    assert response.status_code == 400 and "not a quantity" in response.context["errors"]["reserved"][0]
    assert response.context["form"]["cpu"] == "lots"
    browser.post("/nodes/h1/reserved/", {"cpu": "500m", "memory": ""})
    node.refresh_from_db()
    assert (node.reserved_cpu, node.reserved_memory) == (500, 0)


def test_remove_is_refused_for_a_ready_node_and_works_for_a_not_ready_one(browser, node):
    response = browser.post("/nodes/h1/delete/", follow=True)
    assert "only a NotReady node can be removed" in response.content.decode()
    Node.objects.filter(pk=node.pk).update(status=Node.Status.NOT_READY)
    response = browser.post("/nodes/h1/delete/")
    assert response.status_code == 302 and response["Location"] == "/nodes/"
    assert not Node.objects.exists()


def test_the_pages_need_a_login(client, node):
    assert client.get("/nodes/h1/")["Location"].startswith("/login/")
    client.post("/nodes/h1/cordon/")
    node.refresh_from_db()
    assert not node.unschedulable
