"""Committing placements optimistically: a placement onto a node stands only if the node's
resource_version is still the one the snapshot read.

The nodes are locked in id order, their versions compared, and the winners bumped, all
inside the caller's transaction and in one statement: the locks hold until it commits, so
a competing scheduler waits, then sees a newer version and re-plans. A pass may claim in
several rounds within one transaction; once it holds nodes from an earlier round, those
it claims next are not in id order with them, and waiting for them could deadlock with
another pass doing the same. Such a claim skips nodes held elsewhere instead: they count
as lost, to be re-planned with a fresh read. Every transaction that waits for nodes holds
none, or locks in id order.
"""

from __future__ import annotations

from django.db import connection

from nodes.models import Node

_TABLE = Node._meta.db_table
# The CTE locks the wanted nodes in id order (MATERIALIZED: computed once, not folded into
# the UPDATE, so the locking follows its ORDER BY); the UPDATE bumps those whose version,
# as read once each lock was granted, is still the one the snapshot read, and says which.
_CLAIM = (
    f"WITH locked AS MATERIALIZED (SELECT id, resource_version FROM {_TABLE} "  # noqa: S608
    "WHERE id = ANY(%s) ORDER BY id FOR UPDATE{skip}) "
    f"UPDATE {_TABLE} AS n SET resource_version = n.resource_version + 1 "
    "FROM locked, unnest(%s::bigint[], %s::bigint[]) AS v(id, version) "
    "WHERE locked.id = n.id AND v.id = n.id AND v.version = locked.resource_version "
    "RETURNING n.id"
)
_CLAIM_WAITING = _CLAIM.format(skip="")
_CLAIM_SKIPPING = _CLAIM.format(skip=" SKIP LOCKED")


def claim_nodes(read_versions: dict[int, int], *, holding: bool = False) -> set[int]:
    """Lock these nodes; bump and return those whose version is still the one read.
    `holding`: the transaction already holds claimed nodes, so nodes locked elsewhere are
    skipped (lost), not waited for."""
    if not read_versions:
        return set()
    ids = sorted(read_versions)
    with connection.cursor() as cursor:
        cursor.execute(
            _CLAIM_SKIPPING if holding else _CLAIM_WAITING, [ids, ids, [read_versions[pk] for pk in ids]]
        )
        return {row[0] for row in cursor.fetchall()}
