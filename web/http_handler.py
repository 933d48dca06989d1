"""Django's ASGI handler, with each request served in one trip to a thread.

Django's own handler runs the middleware chain in async mode. Every piece of middleware
with synchronous hooks (all of Django's, in async mode, run `process_request`,
`process_view` and `process_response` through `sync_to_async`), and WhiteNoise, which is
synchronous only, then hands the request between the event loop and a thread and back:
16 round trips for a POST of a deployment (tests/integration/test_http_handler.py), each
waiting its turn on a loop that also carries thousands of agents' sessions. Loading the
chain in sync mode made it 3: the request_started signal, the chain with the view, and the
response's close, each a thread of its own; and the handler's two tasks (the view and a
listener for the client hanging up) cost the loop more turns.

Under load each turn is a wait: with 5,000 hollow agents reporting to one web process
(benchmarks/scheduler_throughput.py), a POST's view took 22 ms at the median, and the
request as a whole 60 ms on average, most of the difference spent waiting for the loop.
So here a response whose content is ready (every one but the log streams) is made in one
trip: the request_started signal, the chain with the view, and the response's close (the
request_finished signal: the database connection goes back to the pool) run in the
request's thread, and the loop only reads the body and sends the answer. Over the same
benchmark's rounds the POSTs' p90 went from 136 to 161 ms to 107 to 122 ms, and the 200
POSTs of a round took 8.8 to 9.3 s instead of 8.5 to 13 s.

A streamed response whose content is an async iterator (the log streams) is iterated on
the loop as Django does it, while listening for the client hanging up (which ends the
iteration: the agents' log streams are closed), and closed afterwards. Its database
connection goes back to the pool as the view returns, not when the stream ends (as in
Django's handler): a followed log stream lasts as long as somebody reads it, and ten of
them would hold a web process's whole pool (BERTH_DB_POOL_SIZE, 10), every other request
then waiting for a connection until it failed.

The thread is the request's own (Django's thread-sensitive context, one per request): requests
run side by side, and one waiting on a row lock does not hold up the others
(tests/integration/test_http_handler.py).
"""

from __future__ import annotations

import asyncio
import contextlib

import django
from asgiref.sync import sync_to_async
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.db import close_old_connections
from django.http import FileResponse
from django.urls import set_script_prefix


class OneTripASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def handle(self, scope, receive, send):
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            set_script_prefix(get_script_prefix(scope))
            response = await sync_to_async(self._serve, thread_sensitive=True)(scope, body_file)
            if response.streaming:
                await self._stream(response, receive, send)
            else:
                await self.send_response(response, send)  # already closed
        finally:
            body_file.close()

    def _serve(self, scope, body_file):
        """In the request's thread: the request_started signal, the middleware chain with the
        view, and, unless the content is streamed, the response's close."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):
                response.block_size = self.chunk_size  # the server chunks it
        if response.streaming:
            close_old_connections()  # what request_finished does; the stream needs no database
        else:
            response.close()
        return response

    async def _stream(self, response, receive, send) -> None:
        """Send a streamed response until its content ends or the client hangs up (which
        stops the iteration), then close it."""
        sending = asyncio.ensure_future(self.send_response(response, send))
        listening = asyncio.ensure_future(self.listen_for_disconnect(receive))
        try:
            try:
                await asyncio.wait([sending, listening], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (listening, sending):
                    if not task.done():
                        task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, RequestAborted):
                        await task  # the sending task's own errors are raised here
        finally:
            await sync_to_async(response.close)()


def get_http_application() -> OneTripASGIHandler:
    """What django.core.asgi.get_asgi_application() does, with this handler."""
    django.setup(set_prefix=False)
    return OneTripASGIHandler()
