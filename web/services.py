"""Mutations of API tokens; the API, the dashboard and `manage.py api_token` call these."""

from django.utils import timezone

from nodes.tokens import API_PREFIX, display_prefix, new_token
from web.models import ApiToken


def do_create_api_token(user, name: str = "") -> tuple[ApiToken, str]:
    """A new API token for `user`; the clear token is returned once and never stored."""
    clear, digest = new_token(API_PREFIX)
    token = ApiToken.objects.create(user=user, name=name, token_hash=digest, prefix=display_prefix(clear))
    return token, clear


def do_revoke_api_token(token: ApiToken) -> None:
    ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(revoked_at=timezone.now())
