"""ASGI entry point: HTTP goes to Django (one thread trip a request: web/http_handler.py),
WebSockets to the Channels consumers."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

from web.http_handler import get_http_application

django_asgi_app = get_http_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import OriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from web.consumers.agent_gate import AgentGate  # noqa: E402
from web.consumers.routing import agent_urlpatterns, browser_urlpatterns  # noqa: E402
from web.lifespan import lifespan  # noqa: E402


def _websocket_router():
    # Browser sockets carry the session cookie, so they are checked against the allowed
    # origins (cross-site WebSocket hijacking). Agents send no Origin and authenticate
    # with their node credential instead.
    allowed = list(settings.ALLOWED_HOSTS) + [o.split("://", 1)[-1] for o in settings.CSRF_TRUSTED_ORIGINS]
    browser = OriginValidator(AuthMiddlewareStack(URLRouter(browser_urlpatterns)), allowed)
    # Agents are admitted a bounded number at a time, before a consumer is built.
    agent = AgentGate(URLRouter(agent_urlpatterns))

    async def route(scope, receive, send):
        if scope["path"].startswith("/ws/agent/"):
            return await agent(scope, receive, send)
        return await browser(scope, receive, send)

    return route


application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": _websocket_router(), "lifespan": lifespan}
)
