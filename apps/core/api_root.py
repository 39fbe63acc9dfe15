"""GET /api/: where everything is, for a person or a client exploring the API."""

from typing import Any

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

ENDPOINTS = {
    "register": "/api/register",
    "login": "/api/login",
    "token_refresh": "/api/token/refresh",
    "me": "/api/me",
    "tasks": "/api/tasks",
    "tasks_bulk": "/api/tasks/bulk",
    "task_types": "/api/task-types",
    "files": "/api/files",
    "schedules": "/api/schedules",
    "stats": "/api/stats",
    "schema": "/api/schema/",
    "docs": "/api/docs/",
    "health": "/health",
    "ready": "/ready",
}


class ApiRootApi(APIView):
    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []

    @extend_schema(
        responses={
            200: inline_serializer(
                "ApiRoot",
                {"name": serializers.CharField(), "endpoints": serializers.DictField()},
            )
        }
    )
    def get(self, request: Request) -> Response:
        return Response({"name": "TaskFlow API", "endpoints": ENDPOINTS})
