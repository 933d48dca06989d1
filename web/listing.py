"""What the dashboard's lists show, for the page as rendered and for its live updates alike.

At thousands of nodes a page listing every node (and a live update resending them all after
each change) cost seconds of the web process and megabytes per browser
(benchmarks/dashboard_scale.py). So the lists are pages of PAGE_SIZE rows, with a name
filter, as Portainer's and the Kubernetes dashboard's are; the overview shows the nodes
that need attention first (NotReady, then cordoned), a few of each list, and counts. A
deployment's replicas are paged the same way (a deployment may have 10,000).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode

from django.core.paginator import Page, Paginator
from django.db.models import Case, IntegerField, QuerySet, Value, When

from nodes.models import Node
from orchestrator.models import Deployment, Replica

PAGE_SIZE = 100
OVERVIEW_ROWS = 20
MAX_FILTER = 63  # the longest name there is


@dataclass(frozen=True)
class View:
    """Which list a page shows: `kind` is "overview", "nodes", "deployments" or "replicas"
    (a deployment's); `page` counts from 1; `q` filters by name (a part of it, any case)."""

    kind: str = "overview"
    page: int = 1
    q: str = ""

    @classmethod
    def parse(cls, kind: str, params) -> View:
        """From a query string's parameters (a QueryDict or a dict of lists). A page that is
        not a number is the first; one past the end is the last (as Django's get_page)."""

        def first(name: str) -> str:
            value = params.get(name, "")
            return (value[0] if value else "") if isinstance(value, list) else value

        try:
            page = max(1, int(first("page")))
        except ValueError:
            page = 1
        return cls(kind=kind, page=page, q=first("q").strip()[:MAX_FILTER])

    def query(self, page: int | None = None) -> str:
        """This view's query string (for links and the live socket), on `page` if given."""
        params = {"page": page or self.page}
        if self.q:
            params["q"] = self.q
        return urlencode(params)


def attention_first(nodes: QuerySet) -> QuerySet:
    """NotReady nodes first, then cordoned ones, then the rest, each by name."""
    rank = Case(
        When(status=Node.Status.NOT_READY, then=Value(0)),
        When(unschedulable=True, then=Value(1)),
        default=Value(2),
        output_field=IntegerField(),
    )
    return nodes.annotate(attention=rank).order_by("attention", "name")


def nodes_page(view: View) -> Page:
    nodes = Node.objects.order_by("name")
    if view.q:
        nodes = nodes.filter(name__icontains=view.q)
    return Paginator(nodes, PAGE_SIZE).get_page(view.page)


def deployments_page(view: View) -> Page:
    deployments = Deployment.live.select_related("namespace").order_by("namespace__name", "name")
    if view.q:
        deployments = deployments.filter(name__icontains=view.q)
    return Paginator(deployments, PAGE_SIZE).get_page(view.page)


def replicas_page(deployment: Deployment, view: View) -> Page:
    """A deployment's replicas, oldest first (a deployment may have 10,000)."""
    replicas = deployment.replica_set.select_related("node", "namespace", "deployment").order_by(
        "created_at", "name"
    )
    if view.q:
        replicas = replicas.filter(name__icontains=view.q)
    return Paginator(replicas, PAGE_SIZE).get_page(view.page)


def old_replicas(deployment: Deployment, current_hash: str) -> int:
    """Its active replicas of an older revision (a rollout's "old"), counted by PostgreSQL."""
    active = deployment.replica_set.filter(phase__in=Replica.ACTIVE)
    return active.exclude(revision=current_hash).count()


def overview_nodes() -> list[Node]:
    return list(attention_first(Node.objects.all())[:OVERVIEW_ROWS])


def overview_deployments() -> list[Deployment]:
    deployments = Deployment.live.select_related("namespace").order_by("namespace__name", "name")
    return list(deployments[:OVERVIEW_ROWS])


def counts() -> dict[str, int]:
    """The overview's tiles: nodes, Ready ones, deployments, running replicas."""
    return {
        "nodes": Node.objects.count(),
        "nodes_ready": Node.objects.filter(status=Node.Status.READY).count(),
        "deployments": Deployment.live.count(),
        "replicas_running": Replica.objects.filter(phase=Replica.Phase.RUNNING).count(),
    }


def page_info(page: Page, view: View) -> dict:
    """What a list's pager shows: this page, how many, the rows' range, the neighbours' links."""
    paginator = page.paginator
    return {
        "number": page.number,
        "pages": paginator.num_pages,
        "count": paginator.count,
        "first": page.start_index(),
        "last": page.end_index(),
        "previous": "?" + view.query(page.number - 1) if page.has_previous() else "",
        "next": "?" + view.query(page.number + 1) if page.has_next() else "",
        "q": view.q,
    }
