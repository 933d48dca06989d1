from django.urls import include, path
from rest_framework.routers import SimpleRouter

from web.api.deployments import DeploymentViewSet
from web.api.events import EventViewSet
from web.api.health import HealthView
from web.api.namespaces import NamespaceViewSet
from web.api.nodes import NodeViewSet
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

namespaced = Router()
namespaced.register("deployments", DeploymentViewSet, basename="deployment")

urlpatterns = [
    path("health", HealthView.as_view(), name="health"),
    path("agents/enroll", EnrollView.as_view(), name="agent-enroll"),
    path("namespaces/<str:namespace>/", include(namespaced.urls)),
    path("", include(router.urls)),
]
