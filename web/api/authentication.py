"""Bearer-token authentication for the REST API (tokens stored as SHA-256 hashes)."""

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from nodes.tokens import API_PREFIX, hash_token
from web.models import ApiToken

# last_used_at is for people; it is written at most this often per token.
_TOUCH_EVERY_SECONDS = 60


class BearerTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        token = token.strip()
        if not token.startswith(API_PREFIX):
            raise exceptions.AuthenticationFailed("invalid API token")
        now = timezone.now()
        api_token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(token)).first()
        if api_token is None or not api_token.is_usable(now) or not api_token.user.is_active:
            raise exceptions.AuthenticationFailed("invalid, expired or revoked API token")
        if (
            api_token.last_used_at is None
            or (now - api_token.last_used_at).total_seconds() > _TOUCH_EVERY_SECONDS
        ):
            ApiToken.objects.filter(pk=api_token.pk).update(last_used_at=now)
        return api_token.user, api_token

    def authenticate_header(self, request):
        return 'Bearer realm="berth"'


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer"}


def user_for_api_token(token: str):
    """The active user an API token belongs to, or None: for WebSocket clients, which send
    the token in their first message (never in the URL)."""
    if not isinstance(token, str) or not token.startswith(API_PREFIX):
        return None
    api_token = ApiToken.objects.select_related("user").filter(token_hash=hash_token(token)).first()
    if api_token is None or not api_token.is_usable(timezone.now()) or not api_token.user.is_active:
        return None
    return api_token.user
