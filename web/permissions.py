"""Who may see and change what. One place, so the API, the dashboard and the WebSocket
subscriptions answer the same way. Today: any active, logged-in user may see and change
every namespace; per-namespace roles will refine these functions, not their callers."""


def _active(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def can_view_namespace(user, namespace) -> bool:
    return _active(user)


def can_view_cluster(user) -> bool:
    return _active(user)


def can_exec(user, namespace) -> bool:
    """A web terminal runs commands as the container's user: far more than seeing or changing
    a spec, so it needs its own grant, the `web.exec_replica` permission (superusers have all)."""
    return _active(user) and user.has_perm("web.exec_replica")


def can_audit_terminals(user) -> bool:
    """Everyone's terminal sessions: staff (the Django admin's people) and superusers."""
    return _active(user) and (user.is_staff or user.is_superuser)
