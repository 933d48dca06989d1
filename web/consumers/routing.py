from django.urls import path

from web.consumers.agent import AgentConsumer
from web.consumers.browser import ClusterConsumer, DeploymentConsumer

agent_urlpatterns = [path("ws/agent/", AgentConsumer.as_asgi())]
browser_urlpatterns = [
    path("ws/cluster/", ClusterConsumer.as_asgi()),
    path("ws/namespaces/<str:namespace>/deployments/<str:name>/", DeploymentConsumer.as_asgi()),
]
