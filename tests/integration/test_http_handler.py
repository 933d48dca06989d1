"""web/http_handler.py: an HTTP request crosses between the event loop and a thread a fixed,
small number of times, whatever the middleware, and the middleware still does its work;
requests run side by side."""

import asyncio
import gc
import json

import pytest
from asgiref.sync import async_to_sync
from asgiref.testing import ApplicationCommunicator
from channels.testing import HttpCommunicator
from django.conf import settings
from django.core import signals
from django.db import connections
from django.http import StreamingHttpResponse

from config.asgi import application
from orchestrator.models import Deployment
from web.http_handler import OneTripASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)

# The handler's one trip: the request_started signal, the middleware chain with the view,
# and the response's close, together. Django's own handler made 16 for the POST below (about
# one per synchronous middleware hook), each a wait for a turn on a loop that thousands of
# agents share.
MAX_TRIPS = 1


def communicator(method: str, path: str, body: bytes = b"", headers=(), app=application) -> HttpCommunicator:
    """A request to the whole ASGI application."""
    headers = [(b"host", b"localhost"), (b"content-length", str(len(body)).encode()), *headers]
    return HttpCommunicator(app, method, path, body=body, headers=headers)


def serve(method: str, path: str, body: bytes = b"", headers=()) -> tuple[dict, int]:
    """One request through the whole ASGI application; the response and how many times work
    came back to the event loop from a thread before the response was sent whole
    (call_soon_threadsafe: how a sync_to_async call ends, and how a thread hands work to
    the loop). What the handler does once the client has its answer is not counted."""

    async def scenario():
        loop = asyncio.get_running_loop()
        calls = 0
        answered = None
        original = loop.call_soon_threadsafe

        def counting(*args, **kwargs):
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        async def counted(scope, receive, send):
            async def sending(message):
                nonlocal answered
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    answered = calls
                await send(message)

            await application(scope, receive, sending)

        loop.call_soon_threadsafe = counting
        try:
            http = communicator(method, path, body, headers, app=counted)
            response = await http.get_response(timeout=30)
        finally:
            del loop.call_soon_threadsafe
        return response, answered

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


def test_a_request_waiting_on_the_database_does_not_hold_up_the_others(token, pg_connect):
    # A PATCH waits for a deployment's row lock (held here as a scheduler's pass would
    # hold it); meanwhile another request of the same process is answered. On Django's
    # single thread-sensitive thread the second one queued behind the first.
    Deployment.objects.all().delete()
    body = json.dumps({"name": "web", "image": "nginx:1.27", "replicas": 1}).encode()
    auth = [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json")]
    assert serve("POST", "/api/v1/namespaces/default/deployments/", body, auth)[0]["status"] == 201
    holder = pg_connect()
    probe = pg_connect(autocommit=True)  # one connection for every look at the lock's waiters

    def lock_waiters() -> int:
        return probe.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = %s",
            [settings.DATABASES["default"]["NAME"]],
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


def test_each_request_starts_and_finishes_once(token):
    # request_finished (the response's close) gives the database connection back to the
    # pool: it must run for every response, in the one trip.
    seen = []

    def started(**kwargs):
        seen.append("started")

    def finished(**kwargs):
        seen.append("finished")

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    try:
        auth = [(b"authorization", f"Bearer {token}".encode())]
        response, trips = serve("GET", "/api/v1/namespaces/default/deployments/", b"", auth)
        assert response["status"] == 200
        assert serve("GET", "/no-such-page/")[0]["status"] == 404
    finally:
        signals.request_started.disconnect(started)
        signals.request_finished.disconnect(finished)
    assert seen == ["started", "finished", "started", "finished"]
    assert trips <= MAX_TRIPS


async def _follow_logs(handler) -> tuple[ApplicationCommunicator, dict]:
    """A GET of a followed log stream sent to `handler`; the client and the response's start."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": "/api/v1/namespaces/default/replicas/x/logs/", "raw_path": b"",
        "query_string": b"follow=true", "root_path": "", "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    client = ApplicationCommunicator(handler, scope)
    await client.send_input({"type": "http.request", "body": b""})
    return client, await client.receive_output(10)


def test_a_streamed_response_stops_when_the_client_hangs_up():
    # The log streams: content from an async generator, sent on the loop; a client that
    # hangs up ends the generator (its agents' streams are closed) and the response is closed.
    handler = OneTripASGIHandler()
    ended, closed = [], []

    async def lines():
        try:
            while True:
                yield b"a line\n"
                await asyncio.sleep(0.01)
        finally:
            ended.append(True)

    def get_response(request):
        response = StreamingHttpResponse(lines(), content_type="text/plain")
        response._resource_closers.append(lambda: closed.append(True))
        return response

    handler.get_response = get_response

    async def scenario():
        client, start = await _follow_logs(handler)
        chunks = [await client.receive_output(10) for _ in range(3)]
        await client.send_input({"type": "http.disconnect"})
        await client.wait(10)  # the handler returns: the stream ended
        return start, chunks

    start, chunks = async_to_sync(scenario)()
    assert start["type"] == "http.response.start" and start["status"] == 200
    assert all(c["body"] == b"a line\n" for c in chunks)
    assert ended == [True]
    assert closed == [True]


def test_a_streamed_response_gives_its_database_connection_back_before_streaming():
    # A followed log stream lasts as long as somebody reads it: holding the connection its
    # view used until then, ten followers would hold a web process's whole pool.
    handler = OneTripASGIHandler()
    used, during = [], []

    async def lines():
        during.append(used[0].connection)  # None once the connection went back
        yield b"a line\n"

    def get_response(request):
        assert Deployment.objects.count() == 0  # the view reads the database
        used.append(connections["default"])
        return StreamingHttpResponse(lines(), content_type="text/plain")

    handler.get_response = get_response

    async def scenario():
        client, start = await _follow_logs(handler)
        body = await client.receive_output(10)
        await client.wait(10)
        return start, body

    start, body = async_to_sync(scenario)()
    assert start["status"] == 200 and body["body"] == b"a line\n"
    assert len(used) == 1 and used[0].connection is None
    assert during == [None]
