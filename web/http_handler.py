"""Django's ASGI handler, with each request's middleware and view run in one trip to a thread.

Django's own handler runs the middleware chain in async mode. Every piece of middleware
with synchronous hooks (all of Django's, in async mode, run `process_request`,
`process_view` and `process_response` through `sync_to_async`), and WhiteNoise, which is
synchronous only, then hands the request between the event loop and a thread and back:
16 round trips for a POST of a deployment (tests/integration/test_http_handler.py), each
waiting its turn on a loop that also carries thousands of agents' sessions. Here it is 3
(the request_started signal, the chain with the view, the response's close). With 2,000
hollow agents on one web process (benchmarks/scheduler_throughput.py, 80 POSTs a round),
the POSTs' latency went from p50 71 and 43 ms, max 929 and 847 ms, to p50 38 to 43 ms,
max 426 to 462 ms; p90 stayed about 215 to 270 ms, the whole machine's CPU being busy then.

Here the chain is loaded in sync mode and run by one `sync_to_async` call, in the request's
thread (Django's thread-sensitive context: the same thread the chain's hooks ran in before).
Each request has a context, so a thread, of its own: requests run side by side, and one
waiting on a row lock does not hold up the others (tests/integration/test_http_handler.py).
Reading the body and sending the response stay on the loop, so a streamed response whose
content is an async iterator (the log streams) is still iterated there, holding no thread.
"""

from __future__ import annotations

import django
from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler


class OneTripASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)


def get_http_application() -> OneTripASGIHandler:
    """What django.core.asgi.get_asgi_application() does, with this handler."""
    django.setup(set_prefix=False)
    return OneTripASGIHandler()
