"""The replica page: its status (live over its deployment's socket), logs, terminal and metrics."""

from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from orchestrator.models import Event, Replica
from web.permissions import can_exec, can_view_namespace


@login_required
def replica_detail(request, namespace, replica):
    found = (
        Replica.objects.select_related("namespace", "deployment", "node")
        .filter(namespace__name=namespace, name=replica)
        .first()
    )
    if found is None or not can_view_namespace(request.user, found.namespace):
        raise Http404(f"replica {replica} not found in namespace {namespace}")
    events = Event.objects.filter(object_uid=found.uid)[:20]
    return render(
        request,
        "replicas/detail.html",
        {"replica": found, "events": events, "can_exec": can_exec(request.user, found.namespace)},
    )
