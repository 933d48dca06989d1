"""Committing placements optimistically: a placement onto a node stands only if the node's
resource_version is still the one the snapshot read.

The nodes are locked in id order (so two schedulers never deadlock), their versions
compared, and the winners bumped, all inside the caller's transaction: the locks hold
until it commits, so a competing scheduler waits, then sees a newer version and re-plans.
"""

from __future__ import annotations

from django.db.models import F

from nodes.models import Node


def claim_nodes(read_versions: dict[int, int]) -> set[int]:
    """Lock these nodes; bump and return those whose version is still the one read."""
    if not read_versions:
        return set()
    ids = sorted(read_versions)
    locked = Node.objects.select_for_update().filter(pk__in=ids).order_by("pk")
    current = dict(locked.values_list("pk", "resource_version"))
    won = [pk for pk in ids if current.get(pk) == read_versions[pk]]
    if won:
        Node.objects.filter(pk__in=won).update(resource_version=F("resource_version") + 1)
    return set(won)
