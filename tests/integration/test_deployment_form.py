"""The dashboard's new-deployment form: the API's validation, the same service."""

import pytest

from orchestrator.models import Deployment

pytestmark = pytest.mark.django_db

FORM = {"namespace": "default", "name": "web", "image": "berth-test/busybox:1", "replicas": "1"}


def test_a_taken_name_is_shown_by_the_field_and_changes_nothing(client, user):
    client.force_login(user)
    assert client.post("/deployments/new/", FORM).status_code == 302
    response = client.post("/deployments/new/", {**FORM, "replicas": "3"})
    assert response.status_code == 400
    assert "a deployment named &#x27;web&#x27; already exists in namespace" in response.content.decode()
    assert Deployment.objects.get(name="web").replicas == 1
