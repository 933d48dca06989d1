"""Tokens: API bearer tokens and join tokens are hashed, revocable and checked everywhere."""

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from unittest import mock

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from nodes import services
from nodes.models import JoinToken, Node
from nodes.services import EnrollmentRefused, do_create_join_token, do_enroll_node, do_revoke_join_token
from nodes.tokens import hash_token
from web.models import ApiToken


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer berth_api_wrong", "Bearer nonsense", "Token abc"])
def test_missing_or_wrong_token_is_401(db, header):
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/nodes/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_revoked_and_expired_tokens_are_401(api, token):
    assert api.get("/api/v1/nodes/").status_code == 200
    ApiToken.objects.update(revoked_at=timezone.now())
    assert api.get("/api/v1/nodes/").status_code == 401
    ApiToken.objects.update(revoked_at=None, expires_at=timezone.now() - timedelta(seconds=1))
    assert api.get("/api/v1/nodes/").status_code == 401


def test_tokens_are_stored_only_as_hashes(token):
    stored = ApiToken.objects.get()
    assert stored.token_hash == hash_token(token)
    assert token not in str(ApiToken.objects.values().get())


def test_management_commands_print_tokens_as_their_last_line(user, capsys):
    call_command("api_token", "alice")
    api_token = capsys.readouterr().out.strip().splitlines()[-1]
    call_command("join_token")
    join_token = capsys.readouterr().out.strip().splitlines()[-1]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token}")
    assert client.get("/api/v1/nodes/").status_code == 200
    assert JoinToken.objects.filter(token_hash=hash_token(join_token)).exists()


def test_join_token_is_shown_once_and_enrolls_a_node(api, client):
    created = api.post("/api/v1/join-tokens/", {"description": "rack 1"}, format="json")
    assert created.status_code == 201
    token = created.json()["token"]
    listed = api.get("/api/v1/join-tokens/").json()["results"]
    assert token not in str(listed) and listed[0]["prefix"] in token

    enrolled = client.post(
        "/api/v1/agents/enroll",
        {"join_token": token, "name": "h1", "labels": {"zone": "a"}},
        content_type="application/json",
    )
    assert enrolled.status_code == 201
    credential = enrolled.json()["credential"]
    node = Node.objects.get(name="h1")
    assert node.credential_hash == hash_token(credential) and node.agent_labels == {"zone": "a"}

    # Enrolling the same name again rotates the credential.
    again = client.post(
        "/api/v1/agents/enroll", {"join_token": token, "name": "h1"}, content_type="application/json"
    )
    node.refresh_from_db()
    assert node.credential_hash == hash_token(again.json()["credential"]) != hash_token(credential)


@pytest.mark.parametrize("state", ["revoked", "expired", "unknown"])
def test_unusable_join_tokens_are_refused(api, client, state):
    token = api.post("/api/v1/join-tokens/", {}, format="json").json()["token"]
    if state == "revoked":
        join_token_id = JoinToken.objects.get().pk
        assert api.delete(f"/api/v1/join-tokens/{join_token_id}/").status_code == 204
    elif state == "expired":
        JoinToken.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    else:
        token = token[:-4] + "abcd"
    response = client.post(
        "/api/v1/agents/enroll", {"join_token": token, "name": "h1"}, content_type="application/json"
    )
    assert response.status_code == 401 and "join token" in response.json()["detail"]
    assert not Node.objects.exists()


def test_enroll_rejects_a_bad_node_name(api, client):
    token = api.post("/api/v1/join-tokens/", {}, format="json").json()["token"]
    response = client.post(
        "/api/v1/agents/enroll", {"join_token": token, "name": "Bad Name"}, content_type="application/json"
    )
    assert response.status_code == 400 and "DNS-1123" in str(response.json()["name"])


def test_dashboard_requires_login(client, db):
    response = client.get("/deployments/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_enrollments_count_their_join_token_uses(api, client):
    token = api.post("/api/v1/join-tokens/", {}, format="json").json()["token"]
    for name in ("h1", "h2", "h1"):
        response = client.post(
            "/api/v1/agents/enroll", {"join_token": token, "name": name}, content_type="application/json"
        )
        assert response.status_code == 201
    stored = JoinToken.objects.get()
    assert stored.use_count == 3 and stored.last_used_at is not None


@pytest.mark.django_db(transaction=True)
def test_a_join_token_revoked_during_an_enrollment_refuses_it_and_leaves_nothing(monkeypatch):
    """The revocation commits between the enrollment's read of the token and its end (on
    another connection, as an operator's DELETE would): the enrollment is refused whole."""
    token, clear = do_create_join_token(None)
    real_record_event = services.record_event

    def revoke():
        do_revoke_join_token(token, None)
        connection.close()

    def revoke_meanwhile(*args, **kwargs):
        revoker = threading.Thread(target=revoke)  # its own connection, committed at once
        revoker.start()
        revoker.join(10)
        assert not revoker.is_alive(), "the revocation waited for the enrollment's lock"
        return real_record_event(*args, **kwargs)

    monkeypatch.setattr(services, "record_event", revoke_meanwhile)
    with pytest.raises(EnrollmentRefused, match="revoked"):
        do_enroll_node(clear, "h1", {})
    assert not Node.objects.filter(name="h1").exists()
    assert JoinToken.objects.get().use_count == 0


@pytest.mark.django_db(transaction=True)
def test_enrollments_with_one_join_token_do_not_wait_for_each_other():
    """A fleet enrolls with one token: an enrollment under way (held here before its end)
    must not hold up the others. When the token's row was locked first, the second waited
    for the first to commit."""
    _, clear = do_create_join_token(None)
    inside, release = threading.Event(), threading.Event()
    real_record_event = services.record_event

    def slow_record_event(node, *args, **kwargs):
        if node.name == "slow":
            inside.set()
            release.wait(30)
        return real_record_event(node, *args, **kwargs)

    def enroll_slowly():
        try:
            do_enroll_node(clear, "slow", {})
        finally:
            connection.close()

    with mock.patch.object(services, "record_event", slow_record_event):
        slow = threading.Thread(target=enroll_slowly)
        slow.start()
        pool = ThreadPoolExecutor(1)
        try:
            assert inside.wait(30)
            fast = pool.submit(lambda: (do_enroll_node(clear, "fast", {}), connection.close()))
            fast.result(timeout=10)  # TimeoutError if it waits for the slow one
        finally:
            release.set()
            slow.join(30)
            pool.shutdown()
    assert set(Node.objects.values_list("name", flat=True)) == {"slow", "fast"}
    assert JoinToken.objects.get().use_count == 2
