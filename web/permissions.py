"""Who may see and change what. One place, so the API, the dashboard and the WebSocket
subscriptions answer the same way. Today: any active, logged-in user may see and change
every namespace; per-namespace roles will refine these functions, not their callers."""


def can_view_namespace(user, namespace) -> bool:
    return bool(user and user.is_authenticated and user.is_active)


def can_view_cluster(user) -> bool:
    return bool(user and user.is_authenticated and user.is_active)
