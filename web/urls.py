from django.contrib.auth import views as auth_views
from django.urls import path

from web import views
from web.replica_views import replica_detail

urlpatterns = [
    path("", views.overview, name="overview"),
    path("login/", auth_views.LoginView.as_view(template_name="login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("nodes/", views.node_list, name="node-list"),
    path("nodes/<str:name>/", views.node_detail, name="node-detail"),
    path("nodes/<str:name>/labels/", views.node_labels, name="node-labels"),
    path("nodes/<str:name>/taints/", views.node_taints, name="node-taints"),
    path("nodes/<str:name>/reserved/", views.node_reserved, name="node-reserved"),
    path("nodes/<str:name>/cordon/", views.node_cordon, name="node-cordon"),
    path("nodes/<str:name>/uncordon/", views.node_uncordon, name="node-uncordon"),
    path("nodes/<str:name>/delete/", views.node_delete, name="node-delete"),
    path("deployments/", views.deployment_list, name="deployment-list"),
    path("deployments/new/", views.deployment_create, name="deployment-create"),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/",
        views.deployment_detail,
        name="deployment-detail",
    ),
    path("namespaces/<str:namespace>/replicas/<str:replica>/", replica_detail, name="replica-detail"),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/scale/",
        views.deployment_scale,
        name="deployment-scale",
    ),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/rollback/",
        views.deployment_rollback,
        name="deployment-rollback",
    ),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/pause/",
        views.deployment_pause,
        name="deployment-pause",
    ),
    path(
        "namespaces/<str:namespace>/deployments/<str:name>/delete/",
        views.deployment_delete,
        name="deployment-delete",
    ),
]
