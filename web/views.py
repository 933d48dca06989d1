"""Dashboard pages: server-rendered, then kept live by one WebSocket per page."""

import shlex

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST
from rest_framework.exceptions import ValidationError

from nodes.models import Node
from nodes.services import NodeNotRemovable, do_cordon_node, do_delete_node, do_uncordon_node
from orchestrator import services
from orchestrator.models import Event, Namespace
from orchestrator.quantities import format_cpu, format_memory
from web import listing
from web.api.deployments import MAX_REPLICAS, DeploymentSerializer, get_deployment_or_404
from web.api.health import background_health, problems
from web.api.nodes import NodeSerializer
from web.api.rollouts import revision_rows, strategy_text
from web.consumers.browser import CLUSTER_EVENTS
from web.forms import FormInputError, deployment_payload
from web.node_forms import labels_text, parse_labels, parse_taints, taints_text


@login_required
def overview(request):
    return render(
        request,
        "overview.html",
        {
            "nodes": listing.overview_nodes(),
            "deployments": listing.overview_deployments(),
            "counts": listing.counts(),
            "rows": listing.OVERVIEW_ROWS,
            "events": Event.objects.all()[:CLUSTER_EVENTS],
            "ws": "/ws/cluster/?view=overview",
            "problems": problems(background_health()),
        },
    )


def _list_page(request, kind: str, pick, template: str, name: str):
    view = listing.View.parse(kind, request.GET)
    page = pick(view)
    return render(
        request,
        template,
        {
            name: page.object_list,
            "pager": listing.page_info(page, view),
            "ws": f"/ws/cluster/?view={kind}&{view.query(page.number)}",
        },
    )


@login_required
def node_list(request):
    return _list_page(request, "nodes", listing.nodes_page, "nodes/list.html", "nodes")


def _node_page(request, node: Node, form: dict | None = None, errors: dict | None = None):
    """The node page; `form` and `errors` carry back what was typed into a form that failed."""
    labels = [
        {
            "key": key,
            "value": value,
            "source": "user" if key in node.user_labels else "agent",
            "overrides": node.agent_labels.get(key) if key in node.user_labels else None,
        }
        for key, value in sorted(node.labels.items())
    ]
    reserved = {"cpu": format_cpu(node.reserved_cpu), "memory": format_memory(node.reserved_memory)}
    form = {
        "labels": labels_text(node.user_labels),
        "taints": taints_text(node.taints),
        **reserved,
        **(form or {}),
    }
    replicas = node.replicas.select_related("deployment", "namespace").order_by("namespace__name", "name")
    events = Event.objects.filter(kind="Node", object_uid=node.uid)[:20]
    return render(
        request,
        "nodes/detail.html",
        {
            "node": node,
            "labels": labels,
            "reserved": reserved,
            "replicas": replicas,
            "events": events,
            "form": form,
            "errors": errors or {},
        },
        status=400 if errors else 200,
    )


@login_required
def node_detail(request, name):
    return _node_page(request, get_object_or_404(Node, name=name))


def _save_node(request, node: Node, payload: dict, form: dict, done: str):
    """Validate `payload` with the API's serializer and apply it through the same service;
    on errors, the page again with them next to the fields and the input kept."""
    serializer = NodeSerializer(node, data=payload, partial=True, context={"request": request})
    if not serializer.is_valid():
        return _node_page(request, node, form, _flatten(serializer.errors))
    serializer.save()
    messages.success(request, done)
    return redirect("node-detail", name=node.name)


@login_required
@require_POST
def node_labels(request, name):
    node = get_object_or_404(Node, name=name)
    form = {"labels": request.POST.get("labels", "")}
    try:
        labels = parse_labels(form["labels"])
    except FormInputError as exc:
        return _node_page(request, node, form, {exc.field: [str(exc)]})
    return _save_node(request, node, {"labels": labels}, form, f"Labels of {name} saved.")


@login_required
@require_POST
def node_taints(request, name):
    node = get_object_or_404(Node, name=name)
    form = {"taints": request.POST.get("taints", "")}
    try:
        taints = parse_taints(form["taints"])
    except FormInputError as exc:
        return _node_page(request, node, form, {exc.field: [str(exc)]})
    serializer = NodeSerializer(
        node, data={"taints": [t for _, t in taints]}, partial=True, context={"request": request}
    )
    if not serializer.is_valid():
        errors = serializer.errors.get("taints")
        if isinstance(errors, list) and errors and all(isinstance(e, dict) for e in errors):
            errors = dict(enumerate(errors))  # DRF's older list-shaped errors
        if isinstance(errors, dict):
            # Errors per taint, by position: say which line each is about.
            lines = [
                f"{taints[int(index)][0]}: {field}: {reason}"
                for index, problems in sorted(errors.items(), key=lambda item: int(item[0]))
                for field, reasons in problems.items()
                for reason in reasons
            ]
            return _node_page(request, node, form, {"taints": lines})
        return _node_page(request, node, form, _flatten(serializer.errors))
    serializer.save()
    messages.success(request, f"Taints of {name} saved.")
    return redirect("node-detail", name=name)


@login_required
@require_POST
def node_reserved(request, name):
    node = get_object_or_404(Node, name=name)
    form = {key: request.POST.get(key, "").strip() for key in ("cpu", "memory")}
    payload = {"reserved": {key: value or None for key, value in form.items()}}
    return _save_node(request, node, payload, form, f"Reserved room of {name} saved.")


@login_required
@require_POST
def node_cordon(request, name):
    node = do_cordon_node(get_object_or_404(Node, name=name), request.user)
    messages.success(request, f"{node.name} cordoned: no new replicas will be placed on it.")
    return redirect("node-detail", name=name)


@login_required
@require_POST
def node_uncordon(request, name):
    node = do_uncordon_node(get_object_or_404(Node, name=name), request.user)
    messages.success(request, f"{node.name} uncordoned: replicas may be placed on it again.")
    return redirect("node-detail", name=name)


@login_required
@require_POST
def node_delete(request, name):
    node = get_object_or_404(Node, name=name)
    try:
        do_delete_node(node, request.user)
    except NodeNotRemovable as exc:
        messages.error(request, str(exc))
        return redirect("node-detail", name=name)
    messages.success(request, f"Node {name} removed; its replicas will be placed elsewhere.")
    return redirect("node-list")


@login_required
def deployment_list(request):
    return _list_page(
        request, "deployments", listing.deployments_page, "deployments/list.html", "deployments"
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
        if not errors:
            try:
                deployment = serializer.save()
            except services.NameTaken as exc:
                errors["name"] = [str(exc)]
            else:
                messages.success(request, f"Deployment {deployment.name} created.")
                return redirect("deployment-detail", namespace=namespace.name, name=deployment.name)
    return render(
        request,
        "deployments/create.html",
        {
            "namespaces": namespaces,
            "form": form,
            "errors": errors,
            "restart_policies": ["always", "on-failure", "never"],
        },
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
    view = listing.View.parse("replicas", request.GET)
    page = listing.replicas_page(deployment, view)
    command_line = shlex.join(deployment.command) if deployment.command else ""
    current_hash = deployment.revision()
    return render(
        request,
        "deployments/detail.html",
        {
            "deployment": deployment,
            "replicas": page.object_list,
            "pager": listing.page_info(page, view),
            "ws_query": view.query(page.number),
            "revisions": revision_rows(deployment),
            "current_hash": current_hash,
            "old_replicas": listing.old_replicas(deployment, current_hash),
            "strategy_text": strategy_text(deployment),
            "command_line": command_line,
            "cpu": format_cpu(deployment.cpu_request),
            "memory": format_memory(deployment.memory_request),
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
def deployment_rollback(request, namespace, name):
    deployment = get_deployment_or_404(namespace, name)
    try:
        revision = int(request.POST.get("revision", ""))
    except ValueError:
        messages.error(request, "Revision: give the number of the revision to roll back to.")
        return redirect("deployment-detail", namespace=namespace, name=name)
    try:
        new = services.do_rollback_deployment(deployment, revision, request.user)
    except services.RollbackError as exc:
        messages.error(request, f"Revision: {exc}.")
    else:
        messages.success(request, f"Rolling back to revision {revision} (now revision {new.number}).")
    return redirect("deployment-detail", namespace=namespace, name=name)


@login_required
@require_POST
def deployment_pause(request, namespace, name):
    deployment = get_deployment_or_404(namespace, name)
    paused = request.POST.get("paused") == "true"
    services.do_update_deployment(deployment, {"paused": paused}, request.user)
    messages.success(request, f"Rollout of {name} {'paused' if paused else 'resumed'}.")
    return redirect("deployment-detail", namespace=namespace, name=name)


@login_required
@require_POST
def deployment_delete(request, namespace, name):
    deployment = get_deployment_or_404(namespace, name)
    services.do_delete_deployment(deployment, request.user)
    messages.success(request, f"Deployment {name} deleted; its replicas are stopping.")
    return redirect("deployment-list")
