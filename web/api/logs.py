"""Logs over REST: GET /api/v1/namespaces/{ns}/deployments/{name}/logs and
/api/v1/namespaces/{ns}/replicas/{replica}/logs.

Query: `tail` (lines per replica, default all), `since` (RFC 3339 or 30s/5m/2h),
`follow` (stream until the client hangs up), `timestamps`, `format` (`text`: one
`[replica] text` line each, stderr lines marked `stderr`; `ndjson`: one JSON object each
with replica, time, stream, text). Without `follow` the lines of all replicas come back
merged in time order. The lines come from the nodes' agents, like the dashboard's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from channels.layers import get_channel_layer
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.views import APIView

from orchestrator.models import Deployment, Replica
from web.api.fields import StrictSerializer
from web.consumers.logs import MAX_TAIL
from web.consumers.viewer import LEASE_SECONDS, RENEW_SECONDS, node_group
from web.permissions import can_view_namespace
from web.streams import SinceError, parse_since

# Without follow, a node that does not answer within this long is reported and skipped.
ANSWER_TIMEOUT_SECONDS = 20.0


class LogsQuerySerializer(StrictSerializer):
    tail = serializers.IntegerField(
        required=False, min_value=0, max_value=MAX_TAIL, allow_null=True, default=None
    )
    since = serializers.CharField(required=False, allow_blank=True, default="")
    follow = serializers.BooleanField(required=False, default=False)
    timestamps = serializers.BooleanField(required=False, default=False)
    format = serializers.ChoiceField(choices=["text", "ndjson"], required=False, default="text")

    def validate_since(self, value):
        if not value:
            return None
        try:
            return parse_since(value)
        except SinceError as exc:
            raise serializers.ValidationError(str(exc)) from None


def format_line(replica: str, time_: str, stream: str, text: str, options: dict) -> str:
    if options["format"] == "ndjson":
        return json.dumps({"replica": replica, "time": time_, "stream": stream, "text": text}) + "\n"
    prefix = f"{time_} " if options["timestamps"] else ""
    marker = " stderr" if stream == "stderr" else ""
    return f"{prefix}[{replica}{marker}] {text}\n"


def format_note(replica: str | None, message: str, options: dict) -> str:
    if options["format"] == "ndjson":
        return json.dumps({"replica": replica, "error": message}) + "\n"
    return f"[berth] {replica + ': ' if replica else ''}{message}\n"


async def stream_logs(namespace: str, targets: dict, options: dict):
    """The formatted lines of `targets` ({replica: node id or None}), as an async generator."""
    layer = get_channel_layer()
    # The default prefix: channels_redis reads every process-local channel through one queue.
    channel = await layer.new_channel()
    streams: dict[str, tuple[str, int]] = {}
    follow = options["follow"]
    collected: list[tuple[str, str, str, str]] = []
    try:
        for replica, node_id in targets.items():
            if node_id is None:
                yield format_note(
                    replica, "no container to read logs from (not placed or not started)", options
                )
                continue
            stream = uuid.uuid4().hex
            streams[stream] = (replica, node_id)
            frame = {
                "type": "logs.open",
                "stream": stream,
                "namespace": namespace,
                "replica": replica,
                "since": options["since"],
                "tail": options["tail"],
                "follow": follow,
                "lease": LEASE_SECONDS,
            }
            await layer.group_send(
                node_group(node_id), {"type": "agent.forward", "frame": frame, "reply_to": channel}
            )
        renewed = time.monotonic()
        while streams:
            wait = RENEW_SECONDS if follow else ANSWER_TIMEOUT_SECONDS
            try:
                message = await asyncio.wait_for(layer.receive(channel), timeout=wait)
            except TimeoutError:
                if not follow:
                    for replica, _ in streams.values():
                        yield format_note(replica, "its node did not answer", options)
                    return
                message = None
            if time.monotonic() - renewed >= RENEW_SECONDS:
                renewed = time.monotonic()
                for node_id in {n for _, n in streams.values()}:
                    ids = [s for s, (_, n) in streams.items() if n == node_id]
                    frame = {"type": "streams.renew", "streams": ids, "lease": LEASE_SECONDS}
                    await layer.group_send(node_group(node_id), {"type": "agent.forward", "frame": frame})
            if message is None:
                continue
            frame = message.get("frame") or {}
            entry = streams.get(frame.get("stream"))
            if entry is None:
                continue
            replica = entry[0]
            if message.get("dropped"):
                yield format_note(replica, f"[… {message['dropped']} lines dropped]", options)
            if frame.get("type") == "logs":
                lines = frame.get("lines") or ()
                if follow:
                    yield "".join(format_line(replica, *line, options) for line in lines)
                else:
                    collected.extend((line[0], replica, line[1], line[2]) for line in lines)
            elif frame.get("type") in ("stream.end", "stream.error"):
                del streams[frame["stream"]]
                if frame.get("error"):
                    yield format_note(replica, frame["error"], options)
        collected.sort(key=lambda item: item[0])  # merged in time order (stable within a replica)
        for time_, replica, stream_name, text in collected:
            yield format_line(replica, time_, stream_name, text, options)
    finally:
        for stream, (_, node_id) in streams.items():
            await layer.group_send(
                node_group(node_id),
                {"type": "agent.forward", "frame": {"type": "stream.close", "stream": stream}},
            )


def _targets(replicas) -> dict:
    return {
        r.name: r.node_id if r.node_id and r.container_id and r.phase != Replica.Phase.PENDING else None
        for r in replicas
    }


class _KeepFormatParameter(DefaultContentNegotiation):
    """`format` here picks text or NDJSON lines, not one of DRF's renderers (its URL format
    override would answer 404 for `format=ndjson`)."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class _LogsView(APIView):
    content_negotiation_class = _KeepFormatParameter

    def respond(self, request, namespace: str, targets: dict):
        query = LogsQuerySerializer(data=request.query_params.dict())
        query.is_valid(raise_exception=True)
        options = query.validated_data
        content_type = (
            "application/x-ndjson" if options["format"] == "ndjson" else "text/plain; charset=utf-8"
        )
        response = StreamingHttpResponse(stream_logs(namespace, targets, options), content_type=content_type)
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold followed lines back
        return response


_PARAMETERS = [
    OpenApiParameter("tail", int, description="lines per replica from the end (default: all)"),
    OpenApiParameter("since", str, description="RFC 3339 time, or a duration ago: 30s, 5m, 2h"),
    OpenApiParameter("follow", bool, description="keep streaming new lines"),
    OpenApiParameter("timestamps", bool, description="prefix each text line with its time"),
    OpenApiParameter("format", str, enum=["text", "ndjson"]),
]


class DeploymentLogsView(_LogsView):
    @extend_schema(parameters=_PARAMETERS, responses={(200, "text/plain"): OpenApiTypes.STR})
    def get(self, request, namespace, name):
        deployment = (
            Deployment.live.select_related("namespace").filter(namespace__name=namespace, name=name).first()
        )
        if deployment is None or not can_view_namespace(request.user, deployment.namespace):
            raise NotFound(f"deployment {name!r} not found in namespace {namespace!r}")
        return self.respond(
            request, namespace, _targets(deployment.replica_set.order_by("created_at", "name"))
        )


class ReplicaLogsView(_LogsView):
    @extend_schema(parameters=_PARAMETERS, responses={(200, "text/plain"): OpenApiTypes.STR})
    def get(self, request, namespace, replica):
        found = (
            Replica.objects.select_related("namespace")
            .filter(namespace__name=namespace, name=replica)
            .first()
        )
        if found is None or not can_view_namespace(request.user, found.namespace):
            raise NotFound(f"replica {replica!r} not found in namespace {namespace!r}")
        return self.respond(request, namespace, _targets([found]))
