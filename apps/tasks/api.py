"""The tasks API: thin views, Input serializers to validate, services to act, Output to answer."""

from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    extend_schema,
    extend_schema_field,
    extend_schema_serializer,
)
from rest_framework import exceptions, serializers, status
from rest_framework.fields import get_error_detail
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.callbacks.models import CallbackState
from apps.callbacks.selectors import callback_summary
from apps.core.api import JSONValueField, StrictInputSerializer
from apps.core.exceptions import ApplicationError, validation_summary
from apps.core.text import ascii_digits
from apps.handlers.registry import task_types
from apps.tasks import selectors, services
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus

IDEMPOTENCY_HEADER = "Idempotency-Key"

TASK_ID_PARAMETER = OpenApiParameter("task_id", OpenApiTypes.UUID, OpenApiParameter.PATH)
# The filters of apps.tasks.selectors.TaskFilter, and the cursor pagination's parameters.
LIST_PARAMETERS = [
    OpenApiParameter(
        "status",
        str,
        enum=TaskStatus.values,
        many=True,
        explode=True,
        description="Only tasks in these states (repeat the parameter for several).",
    ),
    OpenApiParameter("type", str, description="Only tasks of this type."),
    OpenApiParameter("created_after", OpenApiTypes.DATETIME, description="created_at >= this."),
    OpenApiParameter("created_before", OpenApiTypes.DATETIME, description="created_at < this."),
    OpenApiParameter(
        "dead_lettered", bool, description="Only tasks that were (not) dead-lettered."
    ),
    OpenApiParameter("cursor", str, description="The opaque cursor of a next or previous link."),
    OpenApiParameter("page_size", int, description="Tasks per page, 1..200 (default 50)."),
]


def _iso(value: datetime | None) -> str | None:
    """DRF's DateTimeField output in UTC: ISO 8601, "Z" for +00:00."""
    if value is None:
        return None
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.isoformat().replace("+00:00", "Z")


def _task_dict(task: Task, *, full: bool) -> dict[str, Any]:
    """TaskOutputSerializer's dict (`full`) or TaskListItemSerializer's, as DRF's fields make it
    when answering in UTC (tests/tasks/test_reads.py compares them key for key), in a fifth of
    the time: DRF's fields were a fifth of a list page's CPU at 1M rows, and the output a
    twentieth of a create's."""
    data: dict[str, Any] = {"id": str(task.id), "type": task.type, "status": task.status}
    if full:
        data["payload"] = task.payload
    data |= {
        "queue": task.queue,
        "max_retries": task.max_retries,
        "retries": task.retries,
        "attempt_count": task.attempts,
        "run_at": _iso(task.run_at),
        "progress": task.progress,
        "progress_message": task.progress_message,
        "cancel_requested": task.cancel_requested_at is not None,
    }
    if full:  # not in the list: its rows are read without the column (selectors.LIST_FIELDS)
        data["callback_url"] = task.callback_url
    if full:
        data["result"] = task.result
    data |= {
        "error": task.error,
        "dead_lettered_at": _iso(task.dead_lettered_at),
        "dead_letter_reason": task.dead_letter_reason,
        "created_at": _iso(task.created_at),
        "updated_at": _iso(task.updated_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
    }
    return data


class TaskOutputSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    payload = serializers.JSONField()
    queue = serializers.CharField()
    max_retries = serializers.IntegerField()
    retries = serializers.IntegerField(help_text="Retries used since the task was last started.")
    attempt_count = serializers.IntegerField(source="attempts")
    run_at = serializers.DateTimeField(allow_null=True)
    progress = serializers.IntegerField()
    progress_message = serializers.CharField()
    cancel_requested = serializers.SerializerMethodField()
    callback_url = serializers.CharField(help_text="Where the task is POSTed when it ends.")
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField()
    dead_lettered_at = serializers.DateTimeField(allow_null=True)
    dead_letter_reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def get_cancel_requested(self, task: Task) -> bool:
        return task.cancel_requested_at is not None

    def to_representation(self, task: Task) -> dict[str, Any]:
        # By hand (_task_dict) only for this class's own fields, and only when answering in UTC;
        # subclasses that add fields (the detail's attempts and history) go through DRF.
        if type(self) is TaskOutputSerializer and timezone.get_current_timezone_name() == "UTC":
            return _task_dict(task, full=True)
        return super().to_representation(task)


# One instance for every create's answer: DRF deep-copies a serializer's declared fields each
# time one is made (a tenth of a create's CPU in a profile); to_representation keeps no state.
_TASK_OUTPUT = TaskOutputSerializer()


class TaskListItemSerializer(TaskOutputSerializer):
    payload = None  # type: ignore[assignment]
    result = None  # type: ignore[assignment]
    callback_url = None  # type: ignore[assignment]

    def to_representation(self, task: Task) -> dict[str, Any]:
        if timezone.get_current_timezone_name() != "UTC":
            return serializers.Serializer.to_representation(self, task)
        return _task_dict(task, full=False)


class AttemptOutputSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    outcome = serializers.CharField()
    worker = serializers.CharField()
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    error = serializers.CharField()


class StatusChangeOutputSerializer(serializers.Serializer):
    from_status = serializers.CharField()
    to_status = serializers.CharField()
    at = serializers.DateTimeField()
    attempt = serializers.IntegerField()
    note = serializers.CharField()


class CallbackSummarySerializer(serializers.Serializer):
    event = serializers.CharField()
    state = serializers.ChoiceField(choices=CallbackState.choices)
    attempts = serializers.IntegerField()
    last_error = serializers.CharField()
    last_status_code = serializers.IntegerField(allow_null=True)
    delivered_at = serializers.DateTimeField(allow_null=True)


class TaskDetailOutputSerializer(TaskOutputSerializer):
    attempts = AttemptOutputSerializer(many=True, source="attempt_rows.all")
    history = StatusChangeOutputSerializer(many=True, source="status_changes.all")
    callback = serializers.SerializerMethodField(
        help_text="The completion callback's delivery, once the task ended; null if none."
    )

    @extend_schema_field(CallbackSummarySerializer(allow_null=True))
    def get_callback(self, task: Task) -> dict[str, Any] | None:
        summary = callback_summary(task)
        return None if summary is None else CallbackSummarySerializer(summary).data


class TaskResultOutputSerializer(serializers.Serializer):
    """The seed 001 /result shape, for every status."""

    task_id = serializers.UUIDField(source="id")
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField()
    progress = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(source="finished_at", allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class TaskPageOutputSerializer(serializers.Serializer):
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = TaskListItemSerializer(many=True)


def _invalid_cursor() -> ApplicationError:
    return ApplicationError(
        "Invalid cursor: follow the next and previous links as given.",
        code="invalid_cursor",
        fields={"cursor": ["Invalid cursor."]},
    )


class TaskCursorPagination(CursorPagination):
    """DRF's cursor pagination (the task list's and the file list's), refusing what it would
    quietly replace or pass on: a page_size outside 1..max_page_size, a cursor not of ours."""

    ordering = ("-created_at", "-id")
    page_size: int = 50
    page_size_query_param: str = "page_size"
    max_page_size: int = 200

    def get_page_size(self, request: Request) -> int:
        # DRF falls back to the default for 0, -1, abc or 1.5, and clamps 201 to 200: a client
        # asking for what the API does not give should hear so. ASCII digits only (int() also
        # takes " 5", "+5", "5_0" and other scripts' digits), and few of them (int() refuses
        # more than 4300); an empty value is no value, as for the list's filters.
        name = self.page_size_query_param
        value = request.query_params.get(name, "")
        if value == "":
            return self.page_size
        if ascii_digits(value, max_length=10):
            size = int(value)
            if 1 <= size <= self.max_page_size:
                return size
        fields = {name: [f"Must be an integer from 1 to {self.max_page_size}."]}
        raise ApplicationError(
            f"Invalid input: {validation_summary(fields)}", code="validation_error", fields=fields
        )

    def decode_cursor(self, request: Request) -> Cursor | None:
        # DRF answers a cursor it cannot decode with a 404; it is a bad parameter, so a 400.
        try:
            cursor = super().decode_cursor(request)
        except exceptions.NotFound as exc:
            raise _invalid_cursor() from exc
        if cursor is None or not request.query_params[self.cursor_query_param]:
            return cursor  # no cursor, or an empty one: the first page, as before
        if cursor == Cursor(offset=0, reverse=False, position=None):
            # b64decode skips what is not base64 ("!!!!" is b""), and parse_qs what is not
            # key=value: DRF writes no cursor for the first page, so this one is not ours.
            raise _invalid_cursor()
        if cursor.position is None:
            return cursor
        # The position goes into created_at__lt/__gt as it is: garbage was Django's "invalid
        # format" on non_field_errors, an offset past PostgreSQL's ±15:59 a 500. Ours are
        # str(created_at), an aware time in UTC, which parses back to the same string.
        # (djangorestframework-stubs type the position int | None; DRF's are strings.)
        try:
            position = parse_datetime(str(cursor.position))
            if position is None or position.utcoffset() is None:
                raise ValueError("not an aware time")
            position = position.astimezone(UTC)
        except (ValueError, OverflowError) as exc:  # 2030-02-30; past year 9999 in UTC
            raise _invalid_cursor() from exc
        return cursor._replace(position=str(position))  # type: ignore[arg-type]


class TaskListCreateApi(APIView):
    @extend_schema_serializer(component_name="TaskCreate")
    class InputSerializer(StrictInputSerializer):
        type = serializers.CharField(max_length=100)
        payload = JSONValueField(required=False)
        params = JSONValueField(required=False, help_text="Seed 001's name for payload.")
        max_retries = serializers.IntegerField(required=False, allow_null=True)
        run_at = serializers.DateTimeField(required=False, allow_null=True)
        callback_url = serializers.CharField(
            required=False,
            allow_blank=True,
            trim_whitespace=False,
            help_text="POSTed to, signed, when the task ends (docs/api.md, Callbacks).",
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            if "payload" in attrs and "params" in attrs:
                raise serializers.ValidationError(
                    {"params": ["Give payload or params (its older name), not both."]}
                )
            return attrs

    @extend_schema(
        operation_id="tasks_list",
        parameters=LIST_PARAMETERS,
        responses={200: TaskPageOutputSerializer},
    )
    def get(self, request: Request) -> Response:
        tasks = selectors.task_list(user=request.user, filters=request.query_params)  # type: ignore[arg-type]
        paginator = TaskCursorPagination()
        page = paginator.paginate_queryset(tasks, request, view=self)
        return paginator.get_paginated_response(TaskListItemSerializer(page, many=True).data)

    @extend_schema(
        operation_id="tasks_create",
        request=InputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="Repeat a POST safely: the same key returns the first task.",
            )
        ],
        responses={201: TaskOutputSerializer, 200: TaskOutputSerializer},
    )
    def post(self, request: Request) -> Response:
        fields = _plain_input(request.data, fields=_CREATE_FIELDS, payload_default=False)
        if fields is None:  # anything but the usual shape: DRF's checks and field errors
            data = self.InputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            fields = data.validated_data
        payload = fields.get("payload", fields.get("params", {}))
        key = request.headers.get(IDEMPOTENCY_HEADER) or None
        if key is not None:
            services.check_idempotency_key(key)
        task, created = services.task_create(
            owner=request.user,  # type: ignore[arg-type]
            type=fields["type"],
            payload=payload,
            max_retries=fields.get("max_retries"),
            run_at=fields.get("run_at"),
            idempotency_key=key,
            callback_url=fields.get("callback_url", ""),
        )
        response = Response(
            _TASK_OUTPUT.to_representation(task),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
        response["Location"] = f"/api/tasks/{task.id}"
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response


_CREATE_FIELDS = frozenset(TaskListCreateApi.InputSerializer().fields)


@extend_schema_serializer(component_name="TaskBulkItem")
class TaskBulkItemSerializer(StrictInputSerializer):
    type = serializers.CharField(max_length=100)
    payload = JSONValueField(required=False, default=dict)
    max_retries = serializers.IntegerField(required=False, allow_null=True)
    run_at = serializers.DateTimeField(required=False, allow_null=True)
    callback_url = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)


# The item serializer for the items the plain check below leaves to it (stateless between items,
# as DRF's ListField uses its child).
_BULK_ITEM = TaskBulkItemSerializer()
_BULK_ITEM_FIELDS = frozenset(_BULK_ITEM.fields)


def _plain_input(
    data: Any, *, fields: frozenset[str], payload_default: bool
) -> dict[str, Any] | None:
    """What a task's input serializer (a single create's, a bulk item's) gives for data of the
    usual shape, or None to ask it.

    A type that is a clean string, an optional payload (or `params`) other than null, an
    optional integer max_retries, no run_at: the serializer would return these values as they
    are (a JSON body reached here through apps.core.parsers.JSONParser, which refused what
    JSONValueField refuses: unstorable text, nesting, NaN, numbers that overflow to Infinity).
    Its ~20 us per item were a tenth of a bulk request, and DRF's field copies for each new
    serializer 8% of a single create.
    """
    if type(data) is not dict or not data.keys() <= fields:
        return None
    name = data.get("type")
    if type(name) is not str or not 0 < len(name) <= 100 or name != name.strip():
        return None
    max_retries = data.get("max_retries")
    if data.get("run_at") is not None:
        return None
    if max_retries is not None and type(max_retries) is not int:
        return None
    plain: dict[str, Any] = {"type": name}
    for key in ("payload", "params"):
        if key in data:
            if data[key] is None:
                return None
            plain[key] = data[key]
    if "payload" in plain and "params" in plain:
        return None  # the serializer's validate() names the conflict
    if payload_default and "payload" not in plain:
        plain["payload"] = {}
    if "max_retries" in data:
        plain["max_retries"] = max_retries
    if "run_at" in data:
        plain["run_at"] = None
    if "callback_url" in data:
        if type(data["callback_url"]) is not str:
            return None
        plain["callback_url"] = data["callback_url"]  # the service checks it
    return plain


def _plain_item(item: Any) -> dict[str, Any] | None:
    """_plain_input for a bulk item (TaskBulkItemSerializer: the payload defaults to {})."""
    return _plain_input(item, fields=_BULK_ITEM_FIELDS, payload_default=True)


def _bulk_items(tasks: list[Any]) -> list[dict[str, Any]]:
    """The items as TaskBulkItemSerializer validates them; the errors per item as the
    ListField's: a ValidationError of {index: the item's errors}."""
    items: list[dict[str, Any]] = []
    errors: dict[int, Any] = {}
    for index, item in enumerate(tasks):
        plain = _plain_item(item)
        if plain is not None:
            items.append(plain)
            continue
        try:
            items.append(dict(_BULK_ITEM.run_validation(item)))
        except serializers.ValidationError as exc:
            errors[index] = exc.detail
        except DjangoValidationError as exc:
            errors[index] = get_error_detail(exc)
    if errors:
        raise serializers.ValidationError({"tasks": errors})  # type: ignore[dict-item]
    return items


def _item_errors(errors: Any) -> dict[str, list[str]] | None:
    """{"tasks[3].payload": [...]} from a ListField's per-item errors, or None if the list itself
    was refused (not a list, empty)."""
    if not isinstance(errors, dict):  # DRF 3.18 gives {index: errors} for the bad items only
        return None
    fields: dict[str, list[str]] = {}
    for index, item_errors in errors.items():
        if isinstance(item_errors, dict):
            for field, messages in item_errors.items():
                fields[f"tasks[{index}].{field}"] = [str(m) for m in messages]
        else:  # the item itself was refused (null): a list of messages
            fields[f"tasks[{index}].non_field_errors"] = [str(m) for m in item_errors]
    return fields


class TaskBulkCreateApi(APIView):
    """Create up to BULK_MAX_TASKS tasks in one request: all valid, or none created."""

    @extend_schema_serializer(component_name="TaskBulkCreate")
    class InputSerializer(StrictInputSerializer):
        # The request's shape (and its schema); see `post` for how it is checked.
        tasks = serializers.ListField(child=TaskBulkItemSerializer(), allow_empty=False)

    @extend_schema_serializer(component_name="TaskBulkCreated")
    class OutputSerializer(serializers.Serializer):
        created = serializers.IntegerField()
        ids = serializers.ListField(child=serializers.UUIDField())

    @extend_schema(
        operation_id="tasks_bulk_create",
        request=InputSerializer,
        parameters=[
            OpenApiParameter(
                IDEMPOTENCY_HEADER,
                str,
                OpenApiParameter.HEADER,
                description="Repeat a POST safely: the same key and body return the first "
                "request's tasks. Up to 192 characters (with BULK_MAX_TASKS 1000): each task's "
                "key is this one and #bulk<n>.",
            )
        ],
        responses={201: OutputSerializer, 200: OutputSerializer},
    )
    def post(self, request: Request) -> Response:
        data = request.data
        tasks = data.get("tasks") if type(data) is dict and data.keys() == {"tasks"} else None
        try:
            if type(tasks) is list and tasks:
                # A JSON list of items: each checked as the ListField's child would check it,
                # most without DRF (`_plain_item`).
                items = _bulk_items(tasks)
            else:  # anything else, with DRF's errors for the body and the list
                serializer = self.InputSerializer(data=data)
                serializer.is_valid(raise_exception=True)
                items = [dict(item) for item in serializer.validated_data["tasks"]]
        except serializers.ValidationError as exc:
            detail = exc.detail
            errors = _item_errors(detail.get("tasks") if isinstance(detail, dict) else None)
            if not errors:
                raise
            first = next(iter(errors))
            raise ApplicationError(
                f"Invalid input: {first}: {errors[first][0]} (nothing was created)",
                code="validation_error",
                fields=errors,
            ) from None
        tasks, created = services.task_create_bulk(
            owner=request.user,  # type: ignore[arg-type]
            items=items,
            # An empty header is no key, as for a single create; the service checks the rest.
            idempotency_key=request.headers.get(IDEMPOTENCY_HEADER) or None,
        )
        # A replay answers what the first request answered, as a single create's does.
        response = Response(
            {"created": len(tasks), "ids": [t.id_text for t in tasks]},
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )
        if not created:
            response["Idempotent-Replayed"] = "true"
        return response


@extend_schema(parameters=[TASK_ID_PARAMETER])
class TaskDetailApi(APIView):
    @extend_schema_serializer(component_name="TaskUpdate")
    class UpdateInputSerializer(StrictInputSerializer):
        payload = JSONValueField(required=False)
        run_at = serializers.DateTimeField(required=False, allow_null=True)
        max_retries = serializers.IntegerField(required=False)

    @extend_schema(responses={200: TaskDetailOutputSerializer})
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get_with_history(user=request.user, task_id=task_id)  # type: ignore[arg-type]
        return Response(TaskDetailOutputSerializer(task).data)

    @extend_schema(request=UpdateInputSerializer, responses={200: TaskOutputSerializer})
    def patch(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(user=request.user, task_id=task_id)  # type: ignore[arg-type]
        data = self.UpdateInputSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        if not data.validated_data:
            raise ApplicationError(
                "Nothing to change: give payload, run_at or max_retries.",
                code="validation_error",
                fields={"non_field_errors": ["Give at least one of payload, run_at, max_retries."]},
            )
        task = services.task_update(task=task, actor=request.user, **data.validated_data)  # type: ignore[arg-type]
        return Response(TaskOutputSerializer(task).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(user=request.user, task_id=task_id)  # type: ignore[arg-type]
        services.task_delete(task=task)
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(parameters=[TASK_ID_PARAMETER])
class TaskResultApi(APIView):
    @extend_schema(responses={200: TaskResultOutputSerializer})
    def get(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(user=request.user, task_id=task_id)  # type: ignore[arg-type]
        return Response(TaskResultOutputSerializer(task).data)


@extend_schema(parameters=[TASK_ID_PARAMETER])
class TaskCancelApi(APIView):
    @extend_schema(request=None, responses={200: TaskOutputSerializer})
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(user=request.user, task_id=task_id)  # type: ignore[arg-type]
        task = services.task_cancel(task=task, actor=request.user)  # type: ignore[arg-type]
        return Response(TaskOutputSerializer(task).data)


@extend_schema(parameters=[TASK_ID_PARAMETER])
class TaskRetryApi(APIView):
    @extend_schema(request=None, responses={200: TaskOutputSerializer})
    def post(self, request: Request, task_id: str) -> Response:
        task = selectors.task_get(user=request.user, task_id=task_id)  # type: ignore[arg-type]
        task = services.task_retry(task=task, actor=request.user)  # type: ignore[arg-type]
        return Response(TaskOutputSerializer(task).data)


class RateLimitOutputSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    period = serializers.ChoiceField(choices=["second", "minute"])


class TaskTypeOutputSerializer(serializers.Serializer):
    name = serializers.CharField()
    kind = serializers.ChoiceField(
        choices=["code", "webhook"], help_text="code: an SDK handler; webhook: set up in the admin."
    )
    description = serializers.CharField()
    queue = serializers.CharField()
    default_max_retries = serializers.IntegerField(allow_null=True)
    max_retries_limit = serializers.IntegerField(help_text="The most max_retries may be.")
    time_limit_seconds = serializers.IntegerField(allow_null=True)
    rate_limit = RateLimitOutputSerializer(
        allow_null=True, help_text="At most `count` tasks start per period, cluster-wide."
    )
    concurrency_limit = serializers.IntegerField(
        allow_null=True, help_text="At most this many run at once, cluster-wide."
    )
    payload_schema = serializers.JSONField()


@method_decorator(never_cache, name="get")
class TaskTypeListApi(APIView):
    @extend_schema(responses={200: TaskTypeOutputSerializer(many=True)})
    def get(self, request: Request) -> Response:
        from apps.handlers.schema import payload_json_schema

        types: list[dict[str, Any]] = [
            {
                "name": spec.name,
                "kind": spec.kind,
                "description": spec.description,
                "queue": spec.queue.value,
                "default_max_retries": spec.max_retries,
                "max_retries_limit": spec.retries_limit,
                "time_limit_seconds": spec.time_limit_seconds,
                "rate_limit": (
                    {"count": spec.rate_limit.count, "period": spec.rate_limit.period_name}
                    if spec.rate_limit
                    else None
                ),
                "concurrency_limit": spec.concurrency_limit,
                "payload_schema": payload_json_schema(spec.payload_serializer),
            }
            for spec in task_types(enabled_only=True)  # what a task can be created with now
        ]
        return Response(TaskTypeOutputSerializer(types, many=True).data)
