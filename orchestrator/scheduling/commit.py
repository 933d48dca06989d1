"""Committing placements optimistically: a placement onto a node stands only if the node's
resource_version is still the one the snapshot read.

The nodes are locked in id order, their versions compared, and the winners bumped, all
inside the caller's transaction: the locks hold until it commits, so a competing scheduler
waits, then sees a newer version and re-plans. A pass may claim in several rounds within
one transaction; once it holds nodes from an earlier round, those it claims next are not
in id order with them, and waiting for them could deadlock with another pass doing the
same. Such a claim skips nodes held elsewhere instead: they count as lost, to be re-planned
with a fresh read. Every transaction that waits for nodes holds none, or locks in id order.
"""

from __future__ import annotations

from django.db.models import F

from nodes.models import Node


def claim_nodes(read_versions: dict[int, int], *, holding: bool = False) -> set[int]:
    """Lock these nodes; bump and return those whose version is still the one read.
    `holding`: the transaction already holds claimed nodes, so nodes locked elsewhere are
    skipped (lost), not waited for."""
    if not read_versions:
        return set()
    ids = sorted(read_versions)
    locked = Node.objects.select_for_update(skip_locked=holding).filter(pk__in=ids).order_by("pk")
    current = dict(locked.values_list("pk", "resource_version"))
    won = [pk for pk in ids if current.get(pk) == read_versions[pk]]
    if won:
        Node.objects.filter(pk__in=won).update(resource_version=F("resource_version") + 1)
    return set(won)
