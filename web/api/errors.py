"""API errors are JSON: {"field": ["reason", ...]} for invalid input, {"detail": "..."} otherwise."""

from django.db import IntegrityError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler


def exception_handler(exc, context):
    response = drf_exception_handler(exc, context)
    if response is None and isinstance(exc, IntegrityError):
        return Response(
            {"detail": "conflicts with an existing object (was it just created by someone else?)"},
            status=status.HTTP_409_CONFLICT,
        )
    return response
