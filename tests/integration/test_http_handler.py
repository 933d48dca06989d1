"""web/http_handler.py: an HTTP request crosses between the event loop and a thread a fixed,
small number of times, whatever the middleware, and the middleware still does its work;
requests run side by side."""

import asyncio
import gc
import json

import psycopg
import pytest
from asgiref.sync import async_to_sync
from channels.testing import HttpCommunicator
from django.conf import settings

from config.asgi import application
from orchestrator.models import Deployment
from web.http_handler import OneTripASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)

# The handler's trips: the request_started signal, the middleware chain with the view, and
# the response's close. Django's own handler made 16 for the POST below (about one per synchronous
# middleware hook), each a wait for a turn on a loop that thousands of agents share.
MAX_TRIPS = 3


def communicator(method: str, path: str, body: bytes = b"", headers=()) -> HttpCommunicator:
    """A request to the whole ASGI application."""
    headers = [(b"host", b"localhost"), (b"content-length", str(len(body)).encode()), *headers]
    return HttpCommunicator(application, method, path, body=body, headers=headers)


def serve(method: str, path: str, body: bytes = b"", headers=()) -> tuple[dict, int]:
    """One request through the whole ASGI application; the response and how many times work
    came back to the event loop from a thread meanwhile (call_soon_threadsafe: how a
    sync_to_async call ends, and how a thread hands work to the loop)."""

    async def scenario():
        loop = asyncio.get_running_loop()
        calls = 0
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        loop.call_soon_threadsafe = counting
        try:
            http = communicator(method, path, body, headers)
            response = await http.get_response(timeout=30)
        finally:
            del loop.call_soon_threadsafe
        return response, calls

    return async_to_sync(scenario)()


def test_the_middleware_chain_is_loaded_in_sync_mode():
    handler = application.application_mapping["http"]
    assert isinstance(handler, OneTripASGIHandler)
    assert not asyncio.iscoroutinefunction(handler._middleware_chain)


def test_an_api_post_makes_a_fixed_number_of_trips_to_a_thread(token):
    body = json.dumps({"name": "web", "image": "nginx:1.27", "replicas": 2}).encode()
    response, trips = serve(
        "POST",
        "/api/v1/namespaces/default/deployments/",
        body,
        [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")],
    )
    assert response["status"] == 201, response["body"][:500]
    assert Deployment.live.get(name="web").replicas == 2
    assert trips <= MAX_TRIPS, f"{trips} trips from a thread to the loop for one request"


def test_the_middleware_still_guards_and_answers(user):
    # CSRF (a session form without its token), authentication (the dashboard sends the
    # anonymous to the login page) and the clickjacking header: all in the one trip.
    response, _ = serve("POST", "/login/", b"username=alice&password=x",
                        [(b"content-type", b"application/x-www-form-urlencoded")])  # fmt: skip
    assert response["status"] == 403
    response, trips = serve("GET", "/")
    headers = {name.lower(): value for name, value in response["headers"]}
    assert response["status"] == 302
    assert headers[b"location"].startswith(b"/login/")
    assert headers[b"x-frame-options"] == b"DENY"
    assert trips <= MAX_TRIPS


def test_a_request_waiting_on_the_database_does_not_hold_up_the_others(token):
    # A PATCH waits for a deployment's row lock (held here as a scheduler's pass would
    # hold it); meanwhile another request of the same process is answered. On Django's
    # single thread-sensitive thread the second one queued behind the first.
    Deployment.objects.all().delete()
    body = json.dumps({"name": "web", "image": "nginx:1.27", "replicas": 1}).encode()
    auth = [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")]
    assert serve("POST", "/api/v1/namespaces/default/deployments/", body, auth)[0]["status"] == 201
    url = settings.DATABASES["default"]

    def connect(**options):
        return psycopg.connect(
            host=url["HOST"], port=url["PORT"], dbname=url["NAME"], user=url["USER"],
            password=url["PASSWORD"], **options,
        )  # fmt: skip

    holder = connect()
    probe = connect(autocommit=True)  # one connection for every look at the lock's waiters

    def lock_waiters() -> int:
        return probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
            [url["NAME"]],
        ).fetchone()[0]

    async def scenario():
        holder.execute("SELECT 1 FROM orchestrator_deployment WHERE name = 'web' FOR UPDATE")
        patching = communicator(
            "PATCH", "/api/v1/namespaces/default/deployments/web/", b'{"replicas": 3}', auth
        )
        patch = asyncio.ensure_future(patching.get_response(30))
        async with asyncio.timeout(10):  # until the PATCH waits for the lock
            while not await asyncio.to_thread(lock_waiters):
                assert not patch.done(), "the PATCH did not wait for the row lock"
                await asyncio.sleep(0.02)
        listing = await communicator(
            "GET", "/api/v1/namespaces/default/deployments/", b"", auth
        ).get_response(10)
        still_waiting = not patch.done()
        holder.rollback()  # the lock goes: the PATCH goes through
        return listing, still_waiting, await patch

    try:
        listing, still_waiting, patched = async_to_sync(scenario)()
    finally:
        holder.close()
        probe.close()
        gc.collect()  # the requests' threads are gone: their connections close with them
    assert listing["status"] == 200 and json.loads(listing["body"])["count"] == 1
    assert still_waiting
    assert patched["status"] == 200, patched["body"][:500]
    assert Deployment.live.get(name="web").replicas == 3
