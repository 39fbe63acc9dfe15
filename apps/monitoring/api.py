"""Liveness and readiness probes; task statistics; staff's task look-up and retry."""

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.cache import never_cache
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.core.exceptions import NotFound
from apps.monitoring import collectors, selectors
from apps.monitoring.services import readiness
from apps.tasks import services as task_services
from apps.tasks.api import TaskDetailOutputSerializer, TaskOutputSerializer
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus

logger = logging.getLogger(__name__)


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


# --- GET /api/stats ------------------------------------------------------------------------------

# Staff's answer is the same for every staff member: computed at most once per this many seconds.
STAFF_STATS_CACHE_SECONDS = 2


class PercentilesSerializer(serializers.Serializer):
    count = serializers.IntegerField(help_text="Observations in the window.")
    p50 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    p99 = serializers.FloatField(allow_null=True)


class TypeStatsSerializer(serializers.Serializer):
    type = serializers.CharField()
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Now, by status.")
    last_hour = serializers.DictField(
        child=serializers.IntegerField(),
        help_text="Events in the window: created, started (attempts), succeeded, failed, "
        "retried, cancelled, dead_lettered, replayed.",
    )
    queue_wait_seconds = PercentilesSerializer(help_text="From (re)queued to claimed, per attempt.")
    run_seconds = PercentilesSerializer(help_text="One attempt's run time (lost attempts aside).")


class ThroughputSerializer(serializers.Serializer):
    minute = serializers.DateTimeField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()


class TaskSummarySerializer(serializers.Serializer):
    id = serializers.UUIDField()
    type = serializers.CharField()
    status = serializers.ChoiceField(choices=TaskStatus.choices)
    owner = serializers.EmailField(source="owner.email")
    attempt_count = serializers.IntegerField(source="attempts")


class RunningTaskSerializer(TaskSummarySerializer):
    progress = serializers.IntegerField()
    progress_message = serializers.CharField()
    started_at = serializers.DateTimeField(allow_null=True)


class FailedTaskSerializer(TaskSummarySerializer):
    error = serializers.CharField()
    finished_at = serializers.DateTimeField(allow_null=True)
    dead_lettered_at = serializers.DateTimeField(allow_null=True)
    dead_letter_reason = serializers.CharField()


class QueueSerializer(serializers.Serializer):
    name = serializers.CharField()
    exists = serializers.BooleanField()
    messages = serializers.IntegerField(help_text="Ready messages (depth).")
    consumers = serializers.IntegerField()


class WorkerSerializer(serializers.Serializer):
    hostname = serializers.CharField()
    queues = serializers.ListField(child=serializers.CharField())
    concurrency = serializers.IntegerField(allow_null=True)
    processes = serializers.IntegerField(allow_null=True)
    autoscale_max = serializers.IntegerField(allow_null=True)
    pool = serializers.CharField(allow_null=True)
    active = serializers.IntegerField(help_text="Messages it is executing now.")
    pid = serializers.IntegerField(allow_null=True)


class StatsOutputSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(
        choices=["own", "all"], help_text="own: your tasks; all (staff): everyone's."
    )
    generated_at = serializers.DateTimeField()
    window_minutes = serializers.IntegerField()
    total = serializers.IntegerField()
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="Now, by status.")
    types = TypeStatsSerializer(many=True)
    throughput = ThroughputSerializer(many=True, help_text="Finished per minute, oldest first.")
    running = RunningTaskSerializer(many=True)
    recent_failures = FailedTaskSerializer(many=True)
    queues = QueueSerializer(many=True, required=False, help_text="Staff only.")
    broker_error = serializers.CharField(
        required=False, help_text="Staff only, if RabbitMQ failed."
    )
    workers = WorkerSerializer(many=True, required=False, help_text="Staff only.")
    workers_checked_at = serializers.DateTimeField(required=False, allow_null=True)
    workers_error = serializers.CharField(required=False)


def _staff_stats_key() -> str:
    broker = hashlib.sha256(str(settings.CELERY_BROKER_URL).encode()).hexdigest()[:12]
    return f"monitoring:stats:{broker}"


def _broker_state() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["queues"] = collectors.queue_depths()
    except Exception as exc:
        logger.warning("Queue depths unavailable: %s", exc)
        out["queues"], out["broker_error"] = [], f"{type(exc).__name__}: {exc}"[:300]
    try:
        workers = collectors.workers_online()
    except Exception as exc:
        out["workers"], out["workers_checked_at"] = [], None
        out["workers_error"] = f"{type(exc).__name__}: {exc}"[:300]
    else:
        out["workers"] = workers["workers"]
        out["workers_checked_at"] = datetime.fromtimestamp(workers["at"], tz=UTC)
    return out


@method_decorator(never_cache, name="get")
class StatsApi(APIView):
    """Task statistics: yours, or everyone's for staff (with RabbitMQ's queues and the workers)."""

    @extend_schema(operation_id="stats", responses={200: StatsOutputSerializer})
    def get(self, request: Request) -> Response:
        if not request.user.is_staff:
            stats = selectors.task_stats(owner_id=request.user.pk, now=timezone.now())
            return Response(StatsOutputSerializer({"scope": "own", **stats}).data)
        data = cache.get(_staff_stats_key())
        if data is None:
            stats = selectors.task_stats(owner_id=None, now=timezone.now())
            data = StatsOutputSerializer({"scope": "all", **stats, **_broker_state()}).data
            cache.set(_staff_stats_key(), data, STAFF_STATS_CACHE_SECONDS)
        return Response(data)


# --- Staff: any task by id, and retry it ----------------------------------------------------------

TASK_ID_PARAMETER = OpenApiParameter("task_id", OpenApiTypes.UUID, OpenApiParameter.PATH)


class StaffTaskOutputSerializer(TaskDetailOutputSerializer):
    owner = serializers.EmailField(source="owner.email")


def _any_task(task_id: str) -> Task:
    task = Task.objects.select_related("owner").filter(id=task_id).first()
    if task is None:
        raise NotFound("No such task.", code="task_not_found")
    return task


@extend_schema(parameters=[TASK_ID_PARAMETER])
@method_decorator(never_cache, name="get")
class StaffTaskDetailApi(APIView):
    """Staff: any user's task, with its attempts and history (the dashboard's search)."""

    permission_classes = [IsAdminUser]

    @extend_schema(
        operation_id="monitoring_task_detail", responses={200: StaffTaskOutputSerializer}
    )
    def get(self, request: Request, task_id: str) -> Response:
        return Response(StaffTaskOutputSerializer(_any_task(task_id)).data)


class CanOperateTasks(IsAdminUser):
    """Staff with the task model's change permission: whom the admin lets run its retry and
    cancel actions (TaskAdmin.has_operate_permission), so that the dashboard's button is no
    wider a door than the admin's."""

    message = "Retrying a task needs the permission to change tasks (tasks.change_task)."

    def has_permission(self, request: Request, view: Any) -> bool:
        return super().has_permission(request, view) and request.user.has_perm("tasks.change_task")


@extend_schema(parameters=[TASK_ID_PARAMETER])
class StaffTaskRetryApi(APIView):
    """Staff allowed to change tasks: retry any user's failed or cancelled task (the dashboard's
    retry button)."""

    permission_classes = [CanOperateTasks]

    @extend_schema(
        operation_id="monitoring_task_retry", request=None, responses={200: TaskOutputSerializer}
    )
    def post(self, request: Request, task_id: str) -> Response:
        task = task_services.task_retry(task=_any_task(task_id), actor=request.user)  # type: ignore[arg-type]
        cache.delete(_staff_stats_key())  # the next refresh shows it
        return Response(TaskOutputSerializer(task).data)
