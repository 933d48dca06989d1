"""Secrets shown once and stored hashed: join tokens, node credentials, API tokens."""

import hashlib
import secrets

JOIN_PREFIX = "berth_join_"
NODE_PREFIX = "berth_node_"
API_PREFIX = "berth_api_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(prefix: str) -> tuple[str, str]:
    """A new random token (prefix + 256 bits) and its hash."""
    token = prefix + secrets.token_urlsafe(32)
    return token, hash_token(token)


def display_prefix(token: str) -> str:
    """Enough of a token to recognise it in a list, far too little to use it."""
    return token[: len(token.split("_")[0]) + 12] if "_" in token else token[:8]
