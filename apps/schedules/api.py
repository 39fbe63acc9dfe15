"""The schedules API: thin views, Input serializers to validate, services to act."""

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_serializer
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.api import JSONValueField, StrictInputSerializer, TextField
from apps.core.exceptions import ApplicationError
from apps.schedules import selectors, services
from apps.schedules.models import Schedule
from apps.tasks.api import IDEMPOTENCY_HEADER, TaskCursorPagination, TaskOutputSerializer
from apps.tasks.services import check_idempotency_key

SCHEDULE_ID_PARAMETER = OpenApiParameter("schedule_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
LIST_PARAMETERS = [
    OpenApiParameter("cursor", str, description="The opaque cursor of a next or previous link."),
    OpenApiParameter("page_size", int, description="Schedules per page, 1..200 (default 50)."),
]


class ScheduleOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    name = serializers.CharField()
    type = serializers.CharField()
    payload = serializers.JSONField()
    cron = serializers.CharField(
        allow_null=True, help_text="5 fields, read in `timezone`; null for an interval."
    )
    every_seconds = serializers.IntegerField(allow_null=True, help_text="null for a cron.")
    timezone = serializers.CharField()
    enabled = serializers.BooleanField()
    next_run_at = serializers.DateTimeField(allow_null=True, help_text="null while disabled.")
    last_run_at = serializers.DateTimeField(allow_null=True)
    last_task_id = serializers.UUIDField(
        allow_null=True, help_text="The task the last firing created; null if it created none."
    )
    last_error = serializers.CharField(
        help_text="Why the last firing created no task; empty if it created one."
    )
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()

    def to_representation(self, instance: Schedule) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["cron"] = instance.cron or None
        return data


class SchedulePageOutputSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ScheduleOutputSerializer(many=True)


def _cron_field(**kwargs: Any) -> TextField:
    return TextField(max_length=200, allow_null=True, allow_blank=True, **kwargs)


class ScheduleListCreateApi(APIView):
    @extend_schema_serializer(component_name="ScheduleCreate")
    class InputSerializer(StrictInputSerializer):
        name = TextField(max_length=200)
        type = TextField(max_length=100)
        payload = JSONValueField(required=False, default=dict)
        cron = _cron_field(required=False, help_text="e.g. '0 9 * * 1-5'; or every_seconds.")
        every_seconds = serializers.IntegerField(required=False, allow_null=True)
        timezone = TextField(max_length=64, required=False, default="UTC")
        enabled = serializers.BooleanField(required=False, default=True)

    @extend_schema(
        operation_id="schedules_list",
        parameters=LIST_PARAMETERS,
        responses={200: SchedulePageOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        schedules = selectors.schedule_list(user=request.user)  # type: ignore[arg-type]
        paginator = TaskCursorPagination()
        page = paginator.paginate_queryset(schedules, request, view=self)
        return paginator.get_paginated_response(ScheduleOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="schedules_create",
        request=InputSerializer,
        responses={201: ScheduleOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        schedule = services.schedule_create(owner=request.user, **data.validated_data)  # type: ignore[arg-type]
        response = Response(ScheduleOutputSerializer(schedule).data, status=status.HTTP_201_CREATED)
        response["Location"] = f"/api/schedules/{schedule.id}"
        return response


@extend_schema(parameters=[SCHEDULE_ID_PARAMETER])
class ScheduleDetailApi(APIView):
    @extend_schema_serializer(component_name="ScheduleUpdate")
    class UpdateInputSerializer(StrictInputSerializer):
        name = TextField(max_length=200, required=False)
        type = TextField(max_length=100, required=False)
        payload = JSONValueField(required=False)
        cron = _cron_field(required=False, help_text="Giving cron alone clears every_seconds.")
        every_seconds = serializers.IntegerField(
            required=False, allow_null=True, help_text="Giving every_seconds alone clears cron."
        )
        timezone = TextField(max_length=64, required=False)
        enabled = serializers.BooleanField(required=False)

    @extend_schema(responses={200: ScheduleOutputSerializer})
    def get(self, request: Request, schedule_id: str) -> Response:
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)  # type: ignore[arg-type]
        return Response(ScheduleOutputSerializer(schedule).data)

    @extend_schema(request=UpdateInputSerializer, responses={200: ScheduleOutputSerializer})
    def patch(self, request: Request, schedule_id: str) -> Response:
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)  # type: ignore[arg-type]
        data = self.UpdateInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if not data.validated_data:
            known = ", ".join(self.UpdateInputSerializer().fields)
            raise ApplicationError(
                f"Nothing to change: give at least one of {known}.",
                code="validation_error",
                fields={"non_field_errors": [f"Give at least one of {known}."]},
            )
        schedule = services.schedule_update(schedule=schedule, **data.validated_data)
        return Response(ScheduleOutputSerializer(schedule).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, schedule_id: str) -> Response:
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)  # type: ignore[arg-type]
        services.schedule_delete(schedule=schedule)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[SCHEDULE_ID_PARAMETER])
class ScheduleRunApi(APIView):
    @extend_schema(
        operation_id="schedules_run",
        request=None,
        responses={201: TaskOutputSerializer, 200: TaskOutputSerializer},
        description="Create the schedule's task now, once; next_run_at does not change. With an "
        "Idempotency-Key header, a retried request answers 200 with the task the first made.",
    )
    def post(self, request: Request, schedule_id: str) -> Response:
        schedule = selectors.schedule_get(user=request.user, schedule_id=schedule_id)  # type: ignore[arg-type]
        key = request.headers.get(IDEMPOTENCY_HEADER) or None
        if key is not None:
            check_idempotency_key(key)
        task, created = services.schedule_run_now(schedule=schedule, idempotency_key=key)
        response = Response(
            TaskOutputSerializer(task).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
        response["Location"] = f"/api/tasks/{task.id}"
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response
