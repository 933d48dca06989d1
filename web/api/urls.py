from django.urls import include, path
from rest_framework.routers import SimpleRouter

from web.api.deployments import DeploymentViewSet
from web.api.events import EventViewSet
from web.api.health import HealthView
from web.api.logs import DeploymentLogsView, ReplicaLogsView
from web.api.metrics import DeploymentMetricsView, NodeMetricsView, ReplicaMetricsView
from web.api.namespaces import NamespaceViewSet
from web.api.nodes import NodeViewSet
from web.api.terminal_sessions import TerminalSessionViewSet
from web.api.tokens import EnrollView, JoinTokenViewSet


class Router(SimpleRouter):
    """Paths work with and without a trailing slash (`/nodes/h1/cordon` and `.../cordon/`):
    a POST to the slash-less form would otherwise fail (Django cannot redirect a POST)."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = "/?"


router = Router()
router.register("nodes", NodeViewSet, basename="node")
router.register("join-tokens", JoinTokenViewSet, basename="join-token")
router.register("namespaces", NamespaceViewSet, basename="namespace")
router.register("events", EventViewSet, basename="event")
router.register("terminal-sessions", TerminalSessionViewSet, basename="terminal-session")

namespaced = Router()
namespaced.register("deployments", DeploymentViewSet, basename="deployment")

# Logs and metrics (web/api/logs.py, web/api/metrics.py): before the routers, whose
# `deployments/{name}` would otherwise take `.../{name}/logs` as an unknown action.
streams = [
    path("nodes/<str:name>/metrics", NodeMetricsView.as_view(), name="node-metrics"),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/logs",
        DeploymentLogsView.as_view(),
        name="deployment-logs",
    ),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/metrics",
        DeploymentMetricsView.as_view(),
        name="deployment-metrics",
    ),
    path(
        "namespaces/<str:namespace>/replicas/<str:replica>/logs",
        ReplicaLogsView.as_view(),
        name="replica-logs",
    ),
    path(
        "namespaces/<str:namespace>/replicas/<str:replica>/metrics",
        ReplicaMetricsView.as_view(),
        name="replica-metrics",
    ),
]
streams += [path(p.pattern._route + "/", p.callback) for p in list(streams)]  # with a trailing slash too

urlpatterns = [
    *streams,
    path("health", HealthView.as_view(), name="health"),
    path("agents/enroll", EnrollView.as_view(), name="agent-enroll"),
    path("namespaces/<str:namespace>/", include(namespaced.urls)),
    path("", include(router.urls)),
]
