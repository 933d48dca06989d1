"""The nodes API contract: what a user may change on a node, and what Berth does about it."""

import pytest
from rest_framework.test import APIClient

from nodes.models import Node
from orchestrator import services
from orchestrator.controllers.deployment import reconcile_deployment
from orchestrator.models import Event, Namespace, Replica

URL = "/api/v1/nodes/"


@pytest.fixture
def node(ready_nodes):
    (node,) = ready_nodes("h1")
    Node.objects.filter(pk=node.pk).update(agent_labels={"zone": "a", "disk": "hdd"}, images=["busybox:1"])
    node.refresh_from_db()
    return node


@pytest.fixture
def enqueued(monkeypatch):
    """The deployment ids whose reconcile was requested (the real task is not queued)."""
    from orchestrator import tasks

    seen: list[int] = []
    monkeypatch.setattr(tasks, "request_reconciles", lambda ids: seen.extend(sorted(set(ids))))
    return seen


def reasons(node) -> list[str]:
    return list(
        Event.objects.filter(kind="Node", object_uid=node.uid)
        .order_by("first_seen")
        .values_list("reason", flat=True)
    )


def create_deployment(name="web", replicas=1):
    return services.do_create_deployment(
        Namespace.objects.get(name="default"),
        {"name": name, "image": "busybox:1", "replicas": replicas},
        None,
    )


def test_get_shows_user_and_agent_labels_taints_reserved_and_images(api, node):
    body = api.get(URL + "h1/").json()
    assert body["labels"] == {"zone": "a", "disk": "hdd"}
    assert body["agent_labels"] == {"zone": "a", "disk": "hdd"}
    assert body["user_labels"] == {}
    assert body["taints"] == []
    assert body["reserved"] == {"cpu": "0", "memory": "0"}
    assert body["image_count"] == 1
    assert body["images"] == ["busybox:1"]
    assert body["capacity"] == {"cpu": 2000, "memory": 2**31}
    assert body["allocatable"] == {"cpu": 2000, "memory": 2**31}
    listed = api.get(URL).json()["results"][0]
    assert listed["name"] == "h1" and listed["image_count"] == 1 and "images" not in listed
    assert api.get(URL + "nope/").status_code == 404


def test_the_agent_reports_its_images_and_labels_on_hello(api, node):
    import uuid

    from nodes.sessions import session_hello

    hello = {"capacity": {"cpu": 4000, "memory": 2**32}, "labels": {"zone": "b"}, "images": ["a:1", "b:2", 3]}
    session_hello(node.pk, uuid.uuid4(), hello, "10.0.0.1")
    body = api.get(URL + "h1/").json()
    assert body["images"] == ["a:1", "b:2"] and body["image_count"] == 2
    assert body["agent_labels"] == {"zone": "b"}


def test_user_labels_win_over_agent_labels_and_replace_the_previous_ones(api, node):
    response = api.patch(URL + "h1/", {"labels": {"disk": "ssd", "example.com/rack": "r1"}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["user_labels"] == {"disk": "ssd", "example.com/rack": "r1"}
    assert body["labels"] == {"zone": "a", "disk": "ssd", "example.com/rack": "r1"}
    # A PATCH of labels replaces the user's labels; the agent's come back where no longer overridden.
    body = api.patch(URL + "h1/", {"labels": {"empty": ""}}, format="json").json()
    assert body["labels"] == {"zone": "a", "disk": "hdd", "empty": ""}
    node.refresh_from_db()
    assert node.user_labels == {"empty": ""}
    assert node.agent_labels == {"zone": "a", "disk": "hdd"}


def test_each_field_changes_bumps_the_version_and_records_an_event(api, node):
    version = node.resource_version
    changes = [
        ({"unschedulable": True}, "Cordoned", "cordoned"),
        ({"unschedulable": False}, "Uncordoned", "uncordoned"),
        ({"labels": {"gpu": "yes"}}, "LabelsChanged", "added gpu=yes"),
        (
            {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]},
            "TaintsChanged",
            "added dedicated=gpu:NoSchedule",
        ),
        ({"reserved": {"cpu": "500m", "memory": "1Gi"}}, "ReservedChanged", "cpu 0→500m, memory 0→1Gi"),
    ]
    for change, reason, words in changes:
        response = api.patch(URL + "h1/", change, format="json")
        assert response.status_code == 200, response.content
        version += 1
        assert response.json()["resource_version"] == version, change
        event = Event.objects.filter(kind="Node", object_uid=node.uid, reason=reason).latest("last_seen")
        assert words in event.message, (change, event.message)
        assert event.actor == "alice"
    body = api.get(URL + "h1/").json()
    assert body["taints"] == [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]
    assert body["reserved"] == {"cpu": "500m", "memory": "1Gi"}
    assert body["allocatable"] == {"cpu": 1500, "memory": 2**31 - 2**30}
    assert body["unschedulable"] is False


def test_the_same_values_again_change_nothing(api, node):
    change = {
        "labels": {"gpu": "yes"},
        "taints": [{"key": "a", "effect": "NoSchedule"}, {"key": "b", "value": "1", "effect": "NoExecute"}],
        "reserved": {"cpu": "1"},
    }
    version = api.patch(URL + "h1/", change, format="json").json()["resource_version"]
    events = Event.objects.count()
    change["taints"].reverse()  # order does not matter
    assert api.patch(URL + "h1/", change, format="json").json()["resource_version"] == version
    assert api.patch(URL + "h1/", {}, format="json").json()["resource_version"] == version
    assert Event.objects.count() == events


def test_several_changes_in_one_patch_are_one_version_and_an_event_each(api, node):
    body = api.patch(
        URL + "h1/",
        {"unschedulable": True, "labels": {"x": "1"}, "reserved": {"memory": "1Mi"}},
        format="json",
    ).json()
    assert body["resource_version"] == node.resource_version + 1
    assert sorted(reasons(node)) == ["Cordoned", "LabelsChanged", "ReservedChanged"]


def test_reserved_keeps_the_key_left_out_and_null_clears(api, node):
    api.patch(URL + "h1/", {"reserved": {"cpu": "250m", "memory": "64Mi"}}, format="json")
    assert api.patch(URL + "h1/", {"reserved": {"cpu": None}}, format="json").json()["reserved"] == {
        "cpu": "0",
        "memory": "64Mi",
    }


def test_reserved_may_exceed_an_unknown_capacity_but_not_a_known_one(api, node):
    response = api.patch(URL + "h1/", {"reserved": {"cpu": "3"}}, format="json")
    assert response.status_code == 400
    assert "more than the node's capacity (2)" in response.json()["reserved"][0]
    Node.objects.create(name="new")  # enrolled, never connected: capacity 0
    body = api.patch(URL + "new/", {"reserved": {"cpu": "3", "memory": "1Gi"}}, format="json").json()
    assert body["reserved"] == {"cpu": "3", "memory": "1Gi"}
    assert body["allocatable"] == {"cpu": 0, "memory": 0}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"labels": {"bad key!": "x"}}, "labels", "not a valid label key"),
        ({"labels": {"-zone": "x"}}, "labels", "starting and ending with a letter or digit"),
        ({"labels": {"Example.COM/zone": "x"}}, "labels", "DNS subdomain"),
        ({"labels": {"/zone": "x"}}, "labels", "prefix before '/' must not be empty"),
        ({"labels": {"a" * 64: "x"}}, "labels", "at most 63 characters"),
        ({"labels": {"zone": "v" * 64}}, "labels", "at most 63 characters (got 64)"),
        ({"labels": {"zone": "a b"}}, "labels", "not a valid label value"),
        ({"labels": ["zone=a"]}, "labels", "dictionary"),
        ({"taints": [{"key": "k", "effect": "NoRun"}]}, "taints", "is not an effect; use one of NoSchedule"),
        ({"taints": [{"value": "v", "effect": "NoSchedule"}]}, "taints", "required"),
        ({"taints": [{"key": "bad key", "effect": "NoSchedule"}]}, "taints", "not a valid taint key"),
        ({"taints": [{"key": "k", "effect": "NoSchedule", "operator": "Equal"}]}, "taints", "unknown field"),
        (
            {
                "taints": [
                    {"key": "k", "value": "1", "effect": "NoSchedule"},
                    {"key": "k", "effect": "NoSchedule"},
                ]
            },
            "taints",
            "more than one taint with key 'k' and effect NoSchedule",
        ),
        ({"reserved": {"cpu": "lots"}}, "reserved", "not a quantity"),
        ({"reserved": {"memory": "1GB"}}, "reserved", "use G"),
        ({"reserved": {"disk": "1Gi"}}, "reserved", "unknown field"),
        ({"unschedulable": "perhaps"}, "unschedulable", "valid boolean"),
        (
            {"unschedulabel": True},
            "unschedulabel",
            "unknown field; expected one of: labels, reserved, taints",
        ),
        ({"status": "Ready"}, "status", "read-only"),
        ({"agent_labels": {}}, "agent_labels", "read-only"),
    ],
)
def test_invalid_changes_name_the_field_and_change_nothing(api, node, change, field, words):
    response = api.patch(URL + "h1/", change, format="json")
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors, errors
    assert words in str(errors[field]), errors
    node.refresh_from_db()
    assert (node.resource_version, node.user_labels, node.taints) == (0, {}, [])


def test_every_problem_is_reported_at_once(api, node):
    errors = api.patch(
        URL + "h1/", {"labels": {"bad key": ""}, "reserved": {"cpu": "x"}, "colour": "red"}, format="json"
    ).json()
    assert set(errors) == {"labels", "reserved", "colour"}


def test_taints_may_share_a_key_with_different_effects(api, node):
    taints = [{"key": "k", "effect": "NoSchedule"}, {"key": "k", "effect": "NoExecute"}]
    body = api.patch(URL + "h1/", {"taints": taints}, format="json").json()
    assert [(t["key"], t["value"], t["effect"]) for t in body["taints"]] == [
        ("k", "", "NoSchedule"),
        ("k", "", "NoExecute"),
    ]


def test_cordon_and_uncordon_endpoints(api, node):
    body = api.post(URL + "h1/cordon/").json()
    assert body["unschedulable"] is True and body["resource_version"] == 1
    assert api.post(URL + "h1/cordon/").json()["resource_version"] == 1  # already cordoned: nothing
    body = api.post(URL + "h1/uncordon/").json()
    assert body["unschedulable"] is False and body["resource_version"] == 2
    assert reasons(node) == ["Cordoned", "Uncordoned"]
    assert api.post(URL + "nope/cordon/").status_code == 404


def test_uncordon_places_the_replicas_that_were_waiting(
    api, node, enqueued, django_capture_on_commit_callbacks
):
    api.post(URL + "h1/cordon/")
    deployment = create_deployment(replicas=2)
    reconcile_deployment(deployment.pk)
    assert set(Replica.objects.values_list("node", "phase")) == {(None, "Pending")}

    with django_capture_on_commit_callbacks(execute=True):
        api.post(URL + "h1/uncordon/")
    assert enqueued == [deployment.pk]
    for pk in enqueued:
        reconcile_deployment(pk)
    assert list(Replica.objects.values_list("node__name", flat=True)) == ["h1", "h1"]


@pytest.mark.parametrize(
    ("before", "after", "places"),
    [
        ({"labels": {"a": "1"}}, {"labels": {"a": "2"}}, True),
        ({"taints": [{"key": "k", "effect": "NoSchedule"}]}, {"taints": []}, True),
        ({"taints": []}, {"taints": [{"key": "k", "effect": "NoSchedule"}]}, False),
        ({"reserved": {"cpu": "1"}}, {"reserved": {"cpu": "500m"}}, True),
        ({"reserved": {"cpu": "500m"}}, {"reserved": {"cpu": "1"}}, False),
        ({"unschedulable": False}, {"unschedulable": True}, False),
    ],
)
def test_only_changes_that_can_make_room_wake_waiting_deployments(
    api, node, enqueued, django_capture_on_commit_callbacks, before, after, places
):
    api.patch(URL + "h1/", before, format="json")
    deployment = create_deployment()
    Replica.objects.create(
        namespace=deployment.namespace, deployment=deployment, name="web-wait1", revision="r", template={}
    )
    with django_capture_on_commit_callbacks(execute=True):
        assert api.patch(URL + "h1/", after, format="json").status_code == 200
    assert enqueued == ([deployment.pk] if places else [])


def test_a_new_no_execute_taint_evicts_the_replicas_running_there(
    api, node, ready_nodes, enqueued, django_capture_on_commit_callbacks
):
    ready_nodes("h2")
    here, elsewhere = create_deployment("here"), create_deployment("elsewhere")
    for deployment, target in ((here, node), (elsewhere, Node.objects.get(name="h2"))):
        Replica.objects.create(
            namespace=deployment.namespace,
            deployment=deployment,
            name=f"{deployment.name}-abcde",
            node=target,
            phase=Replica.Phase.RUNNING,
            revision=deployment.revision(),
            template=deployment.template(),
        )
    taint = {"key": "maintenance", "effect": "NoExecute"}
    with django_capture_on_commit_callbacks(execute=True):
        body = api.patch(URL + "h1/", {"taints": [taint]}, format="json").json()
    assert enqueued == [here.pk]  # only the deployment with a replica on h1
    added = body["taints"][0]["time_added"]  # toleration_seconds count from here
    for pk in enqueued:
        reconcile_deployment(pk)
    evicted = Replica.objects.get(name="here-abcde")
    assert evicted.phase == "Terminating"
    assert evicted.message == "evicted: node h1 has taint maintenance:NoExecute"
    assert Replica.objects.get(name="elsewhere-abcde").phase == "Running"

    enqueued.clear()
    # What GET shows can be sent back; the NoExecute taint is not new, so nothing is evicted
    # again and it keeps the time it was added.
    taints = [*api.get(URL + "h1/").json()["taints"], {"key": "other", "effect": "NoSchedule"}]
    with django_capture_on_commit_callbacks(execute=True):
        body = api.patch(URL + "h1/", {"taints": taints}, format="json").json()
    assert enqueued == []
    assert body["taints"] == [
        {"key": "maintenance", "value": "", "effect": "NoExecute", "time_added": added},
        {"key": "other", "value": "", "effect": "NoSchedule"},
    ]


def test_delete_is_refused_while_the_node_is_ready(api, node):
    response = api.delete(URL + "h1/")
    assert response.status_code == 409
    assert "stop its agent" in response.json()["detail"]
    assert Node.objects.filter(name="h1").exists()


def test_deleting_a_not_ready_node_sends_its_replicas_elsewhere(
    api, node, ready_nodes, enqueued, django_capture_on_commit_callbacks
):
    deployment = create_deployment(replicas=1)
    reconcile_deployment(deployment.pk)
    replica = Replica.objects.get()
    assert replica.node_id == node.pk
    Replica.objects.filter(pk=replica.pk).update(phase=Replica.Phase.RUNNING, container_id="c0ffee")
    Node.objects.filter(pk=node.pk).update(status=Node.Status.NOT_READY)
    ready_nodes("h2")

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(URL + "h1/").status_code == 204
    assert not Node.objects.filter(name="h1").exists()
    replica.refresh_from_db()
    assert (replica.node_id, replica.phase, replica.container_id) == (None, "Pending", "")
    assert "h1 was removed" in replica.message
    assert enqueued == [deployment.pk]
    reconcile_deployment(deployment.pk)
    assert list(Replica.objects.values_list("name", "node__name")) == [(replica.name, "h2")]
    assert Event.objects.filter(kind="Node", name="h1", reason="Removed").exists()
    assert api.get(URL + "h1/").status_code == 404


def test_unauthenticated_requests_are_refused(db, node):
    client = APIClient()
    assert client.get(URL + "h1/").status_code == 401
    assert client.patch(URL + "h1/", {"unschedulable": True}, format="json").status_code == 401
    assert client.post(URL + "h1/cordon/").status_code == 401
    assert client.delete(URL + "h1/").status_code == 401
    node.refresh_from_db()
    assert node.unschedulable is False


def test_put_is_not_offered(api, node):
    assert api.put(URL + "h1/", {"unschedulable": True}, format="json").status_code == 405
