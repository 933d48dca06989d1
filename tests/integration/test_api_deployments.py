"""The deployments API contract: what users and scripts rely on."""

import pytest

from orchestrator.models import Deployment, Event, Replica

URL = "/api/v1/namespaces/default/deployments/"
GOOD = {
    "name": "web",
    "image": "berth-test/busybox:1",
    "replicas": 2,
    "command": ["httpd", "-f", "-p", "80"],
    "env": {"GREETING": "hi"},
    "ports": [{"container": 80, "host": 8080, "protocol": "tcp"}],
    "resources": {"cpu": "250m", "memory": "64Mi"},
}


def test_create_get_patch_delete(api, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api.post(URL, GOOD, format="json")
    assert response.status_code == 201, response.content
    assert len(callbacks) == 1  # the reconcile is enqueued only after commit
    body = response.json()
    assert body["resources"] == {"cpu": "250m", "memory": "64Mi"}
    assert body["generation"] == 1

    detail = api.get(URL + "web/").json()
    assert set(detail["status"]) >= {
        "replicas",
        "ready_replicas",
        "available_replicas",
        "observed_generation",
        "conditions",
    }
    assert detail["ports"] == [{"container": 80, "host": 8080, "protocol": "tcp"}]

    patched = api.patch(URL + "web/", {"replicas": 5}, format="json")
    assert patched.status_code == 200 and patched.json()["replicas"] == 5
    assert patched.json()["generation"] == 2
    # The same value again changes nothing, not even the generation.
    assert api.patch(URL + "web/", {"replicas": 5}, format="json").json()["generation"] == 2

    assert api.delete(URL + "web/").status_code == 204
    assert api.get(URL + "web/").status_code == 404
    assert Deployment.objects.get(name="web").is_deleting  # until its replicas are gone
    assert list(Event.objects.filter(name="web").values_list("reason", flat=True).order_by("first_seen")) == [
        "Created",
        "Scaled",
        "Deleted",
    ]


def test_the_name_is_free_again_once_deleted(api):
    assert api.post(URL, GOOD, format="json").status_code == 201
    taken = api.post(URL, {**GOOD, "replicas": 7}, format="json")
    assert taken.status_code == 409
    assert taken.json() == {"name": ["a deployment named 'web' already exists in namespace 'default'"]}
    assert Deployment.objects.get(name="web").replicas == 2  # the first one, untouched
    assert Event.objects.filter(name="web", reason="Created").count() == 1
    api.delete(URL + "web/")
    assert api.post(URL, GOOD, format="json").status_code == 201


@pytest.mark.django_db(transaction=True)
def test_two_creates_racing_for_a_name_make_one_deployment_and_one_409(django_user_model):
    """No check-then-insert: the second waits on the unique index, then is told the name is
    taken (not a 500)."""
    import threading

    from django.db import connection

    from orchestrator import services
    from orchestrator.models import Namespace

    user = django_user_model.objects.create_user("racer")
    namespace = Namespace.objects.get(name="default")
    spec = {"name": "web", "image": "berth-test/busybox:1", "replicas": 1}
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def create():
        start.wait()
        try:
            services.do_create_deployment(namespace, spec, user)
            outcomes.append("created")
        except services.NameTaken:
            outcomes.append("taken")
        finally:
            connection.close()

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes) == ["created", "taken"]
    assert Deployment.objects.filter(name="web").count() == 1


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"cpu_unknown": 1}, "cpu_unknown", "unknown field"),
        ({"resources": {"cpu": "lots"}}, "resources", "not a quantity"),
        ({"resources": {"memory": "64MB"}}, "resources", "use M"),
        ({"resources": {"gpu": 1}}, "resources", "unknown field"),
        ({"replicas": -1}, "replicas", "greater than or equal to 0"),
        ({"replicas": 10**6}, "replicas", "less than or equal"),
        ({"replicas": "many"}, "replicas", "valid integer"),
        ({"name": "Web_1"}, "name", "DNS-1123"),
        ({"name": "a" * 64}, "name", "63 characters"),
        ({"name": "-web"}, "name", "DNS-1123"),
        ({"image": ""}, "image", "blank"),
        ({"image": "Not An Image"}, "image", "not an image reference"),
        ({"command": "sleep 10"}, "command", "list"),
        ({"env": {"1BAD": "x"}}, "env", "not a valid variable name"),
        ({"env": ["A=1"]}, "env", "dictionary"),
        ({"ports": [{"container": 0}]}, "ports", "greater than or equal to 1"),
        ({"ports": [{"container": 80, "protocol": "sctp"}]}, "ports", "not a valid choice"),
        (
            {"ports": [{"container": 80, "host": 8080}, {"container": 81, "host": 8080}]},
            "ports",
            "listed twice",
        ),
        ({"ports": [{"container": 80, "extra": 1}]}, "ports", "unknown field"),
    ],
)
def test_bad_input_names_the_field_and_creates_nothing(api, change, field, words):
    response = api.post(URL, {**GOOD, **change}, format="json")
    assert response.status_code == 400, response.content
    assert words in str(response.json()[field]), response.json()
    assert not Deployment.objects.exists() and not Replica.objects.exists()


def test_missing_image_and_name_are_both_reported(api):
    response = api.post(URL, {"replicas": 1}, format="json")
    assert response.status_code == 400
    assert set(response.json()) == {"name", "image"}


def test_several_problems_are_reported_together(api):
    response = api.post(URL, {**GOOD, "replicas": -1, "colour": "red"}, format="json")
    assert set(response.json()) == {"replicas", "colour"}


def test_unknown_namespace_is_404(api):
    response = api.post("/api/v1/namespaces/nope/deployments/", GOOD, format="json")
    assert response.status_code == 404
    assert "nope" in response.json()["detail"]
    assert not Deployment.objects.exists()


def test_patch_cannot_rename_and_rejects_bad_values_without_changing_anything(api):
    api.post(URL, GOOD, format="json")
    assert api.patch(URL + "web/", {"name": "other"}, format="json").status_code == 400
    response = api.patch(URL + "web/", {"replicas": 3, "resources": {"cpu": "-1"}}, format="json")
    assert response.status_code == 400 and "resources" in response.json()
    deployment = Deployment.live.get(name="web")
    assert (deployment.replicas, deployment.cpu_request, deployment.generation) == (2, 250, 1)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"ports": [{"host": 8080}]}, "ports"),
        ({"tolerations": [{"value": "x"}]}, "tolerations"),
        ({"topology_spread": [{"max_skew": 2}]}, "topology_spread"),
        ({"affinity": {"preferred": [{"weight": 5}]}}, "affinity"),
    ],
)
def test_patch_with_incomplete_items_is_400_not_500(api, change, field):
    api.post(URL, GOOD, format="json")
    response = api.patch(URL + "web/", change, format="json")
    assert response.status_code == 400, response.content
    assert "required" in str(response.json()[field])


def test_patching_one_resource_keeps_the_other(api):
    api.post(URL, GOOD, format="json")
    body = api.patch(URL + "web/", {"resources": {"cpu": "1"}}, format="json").json()
    assert body["resources"] == {"cpu": "1", "memory": "64Mi"}


def test_replicas_listing(api, ready_nodes):
    from orchestrator.controllers.deployment import reconcile_deployment

    ready_nodes("h1", "h2")
    api.post(URL, GOOD, format="json")
    reconcile_deployment(Deployment.live.get(name="web").pk)
    rows = api.get(URL + "web/replicas/").json()["results"]
    assert len(rows) == 2
    assert {row["node"] for row in rows} == {"h1", "h2"}
    assert all(row["phase"] == "Pending" and row["name"].startswith("web-") for row in rows)
    assert set(rows[0]) >= {"name", "node", "phase", "container_id", "message"}


def test_openapi_schema_and_docs_are_served(api, client):
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/namespaces/{namespace}/deployments/" in schema.content
    assert client.get("/api/docs/").status_code == 200
