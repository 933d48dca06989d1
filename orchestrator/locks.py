"""Singleton loops: a non-blocking PostgreSQL advisory lock, so that when several
workers (or beat firing twice) run the same loop, one does the pass and the others
return at once."""

import zlib

from django.db import connection


def try_transaction_lock(name: str) -> bool:
    """Take the named lock until the current transaction ends; False if someone holds it."""
    key = zlib.crc32(name.encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s)", [key])
        return bool(cursor.fetchone()[0])
