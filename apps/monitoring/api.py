"""Liveness and readiness probes."""

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.monitoring.services import readiness


class HealthApi(APIView):
    """The process is alive (it checks nothing else)."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        responses={200: inline_serializer("Health", {"status": serializers.CharField()})}
    )
    def get(self, request: Request) -> Response:
        return Response({"status": "ok"})


class ReadyApi(APIView):
    """PostgreSQL, RabbitMQ and Redis each checked; 503 naming what is down."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        responses={
            (200, "application/json"): inline_serializer(
                "Ready", {"status": serializers.CharField(), "checks": serializers.DictField()}
            ),
            (503, "application/json"): inline_serializer(
                "NotReady", {"status": serializers.CharField(), "checks": serializers.DictField()}
            ),
        }
    )
    def get(self, request: Request) -> Response:
        checks = readiness()
        down = [name for name, state in checks.items() if state != "ok"]
        if down:
            return Response({"status": "unavailable", "down": down, "checks": checks}, status=503)
        return Response({"status": "ok", "checks": checks})
