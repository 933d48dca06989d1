"""GET /api/v1/health: no authentication, for load balancers, orchestrators and monitoring.

The HTTP status says whether this web process can serve (503 when PostgreSQL is
unreachable). The body also says whether the processes that work in the background are
doing it (orchestrator/liveness.py): a stalled scheduler or node monitor makes `status`
"degraded", with a message saying what to check, but still answers 200: taking the API out
of a load balancer would not bring a scheduler back.
"""

import time

import redis
from django.conf import settings
from django.db import connection
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator import liveness

_redis = None


def _client() -> redis.Redis:
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2)
    return _redis


def background_health() -> dict:
    """The scheduler's and the node monitor's status, or Redis's error if it cannot be read."""
    try:
        seen = liveness.read(_client())
    except (redis.RedisError, ValueError) as exc:
        return {"redis": f"error: {type(exc).__name__}"}
    verdicts = liveness.judge(time.time(), monitor_stall=liveness.monitor_stall_seconds(), **seen)
    return {"redis": "ok", **verdicts}


def problems(health: dict) -> list[str]:
    """What is wrong in a background_health() answer, in words for people."""
    if health.get("redis", "ok") != "ok":
        return [f"Redis cannot be read ({health['redis']}): placements and live updates wait for it"]
    return [part["message"] for part in (health["scheduler"], health["node_monitor"]) if "message" in part]


class HealthView(APIView):
    """Readiness of the control plane (503 when PostgreSQL is unreachable) and whether its
    background processes work (`status` "degraded" when one is stalled)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(
        responses=inline_serializer(
            "Health",
            {
                "status": serializers.CharField(help_text='"ok", "degraded" or "unavailable"'),
                "database": serializers.CharField(),
                "redis": serializers.CharField(),
                "scheduler": serializers.DictField(help_text="status, waiting_passes, message if stalled"),
                "node_monitor": serializers.DictField(help_text="status, last_run_s_ago, message if stalled"),
                "problems": serializers.ListField(child=serializers.CharField()),
            },
        )
    )
    def get(self, request):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as exc:  # any failure means "not ready"; say which
            return Response(
                {"status": "unavailable", "database": f"error: {type(exc).__name__}"},
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        background = background_health()
        found = problems(background)
        return Response(
            {
                "status": "degraded" if found else "ok",
                "database": "ok",
                **background,
                "problems": found,
                "version": "0.1.0",
            }
        )
