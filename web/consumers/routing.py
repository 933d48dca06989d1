from django.urls import path

from web.consumers.agent import AgentConsumer
from web.consumers.browser import ClusterConsumer, DeploymentConsumer
from web.consumers.logs import LogsConsumer
from web.consumers.metrics import DeploymentMetricsConsumer, NodeMetricsConsumer, ReplicaMetricsConsumer
from web.consumers.terminal import TerminalConsumer

agent_urlpatterns = [path("ws/agent/", AgentConsumer.as_asgi())]
browser_urlpatterns = [
    path("ws/cluster/", ClusterConsumer.as_asgi()),
    path("ws/namespaces/<str:namespace>/deployments/<str:name>/", DeploymentConsumer.as_asgi()),
    # Streams (logs, terminal, metrics): web/consumers/logs.py, terminal.py, metrics.py
    path("ws/namespaces/<str:namespace>/deployments/<str:name>/logs/", LogsConsumer.as_asgi()),
    path("ws/namespaces/<str:namespace>/replicas/<str:replica>/logs/", LogsConsumer.as_asgi()),
    path("ws/namespaces/<str:namespace>/replicas/<str:replica>/terminal/", TerminalConsumer.as_asgi()),
    path("ws/nodes/<str:name>/metrics/", NodeMetricsConsumer.as_asgi()),
    path(
        "ws/namespaces/<str:namespace>/deployments/<str:name>/metrics/", DeploymentMetricsConsumer.as_asgi()
    ),
    path("ws/namespaces/<str:namespace>/replicas/<str:replica>/metrics/", ReplicaMetricsConsumer.as_asgi()),
]
