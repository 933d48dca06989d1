"""Dashboard pages: server-rendered, then kept live by one WebSocket per page."""

import shlex

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from nodes.models import Node
from orchestrator import services
from orchestrator.models import Deployment, Namespace, Replica
from web.api.deployments import MAX_REPLICAS, DeploymentSerializer, get_deployment_or_404
from web.forms import deployment_payload


@login_required
def overview(request):
    nodes = list(Node.objects.all())
    deployments = list(Deployment.live.select_related("namespace"))
    return render(
        request,
        "overview.html",
        {
            "nodes": nodes,
            "deployments": deployments,
            "ready_nodes": sum(1 for n in nodes if n.is_ready),
            "running_replicas": Replica.objects.filter(phase=Replica.Phase.RUNNING).count(),
        },
    )


@login_required
def node_list(request):
    return render(request, "nodes/list.html", {"nodes": Node.objects.all()})


@login_required
def deployment_list(request):
    return render(
        request, "deployments/list.html", {"deployments": Deployment.live.select_related("namespace")}
    )


@login_required
def deployment_create(request):
    namespaces = Namespace.objects.all()
    errors: dict[str, list[str]] = {}
    form = request.POST if request.method == "POST" else {"namespace": Namespace.DEFAULT, "replicas": "1"}
    if request.method == "POST":
        namespace = namespaces.filter(name=form.get("namespace")).first()
        if namespace is None:
            errors["namespace"] = ["choose a namespace"]
        payload, form_errors = deployment_payload(form)
        serializer = DeploymentSerializer(data=payload, context={"namespace": namespace, "request": request})
        if not serializer.is_valid():
            errors.update(_flatten(serializer.errors))
        errors.update(form_errors)  # what could not be read at all says so, not "required"
        if not errors and Deployment.live.filter(namespace=namespace, name=payload["name"]).exists():
            errors["name"] = [f"a deployment named {payload['name']!r} already exists in {namespace.name}"]
        if not errors:
            deployment = serializer.save()
            messages.success(request, f"Deployment {deployment.name} created.")
            return redirect("deployment-detail", namespace=namespace.name, name=deployment.name)
    return render(
        request,
        "deployments/create.html",
        {"namespaces": namespaces, "form": form, "errors": errors},
        status=400 if errors else 200,
    )


def _flatten(errors) -> dict[str, list[str]]:
    """DRF's nested errors as {top-level field: ["ports[1].container: why", ...]} for the form."""
    flat: dict[str, list[str]] = {}

    def walk(top: str, path: str, value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(top, f"{path}.{key}", sub)
        elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
            for index, sub in enumerate(value):
                walk(top, f"{path}[{index}]", sub)
        else:
            for item in value if isinstance(value, list) else [value]:
                flat.setdefault(top, []).append(str(item) if path == top else f"{path}: {item}")

    for field, value in errors.items():
        walk(field, field, value)
    return flat


@login_required
def deployment_detail(request, namespace, name):
    deployment = get_deployment_or_404(namespace, name)
    replicas = deployment.replica_set.select_related("node").order_by("created_at", "name")
    command_line = shlex.join(deployment.command) if deployment.command else ""
    return render(
        request,
        "deployments/detail.html",
        {
            "deployment": deployment,
            "replicas": replicas,
            "command_line": command_line,
            "max_replicas": MAX_REPLICAS,
        },
    )


@login_required
@require_POST
def deployment_scale(request, namespace, name):
    deployment = get_deployment_or_404(namespace, name)
    serializer = DeploymentSerializer(
        deployment,
        data={"replicas": request.POST.get("replicas")},
        partial=True,
        context={"request": request},
    )
    try:
        serializer.is_valid(raise_exception=True)
    except ValidationError:
        messages.error(
            request, "Replicas: " + "; ".join(str(e) for e in serializer.errors.get("replicas", []))
        )
        return redirect("deployment-detail", namespace=namespace, name=name)
    serializer.save()
    messages.success(request, f"Scaled {name} to {serializer.validated_data['replicas']} replica(s).")
    return redirect("deployment-detail", namespace=namespace, name=name)


@login_required
@require_POST
def deployment_delete(request, namespace, name):
    deployment = get_deployment_or_404(namespace, name)
    services.do_delete_deployment(deployment, request.user)
    messages.success(request, f"Deployment {name} deleted; its replicas are stopping.")
    return redirect("deployment-list")
