"""Staff's view of tasks: filters, search, read-only attempts and history, retry and cancel."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html

from apps.core.exceptions import ApplicationError
from apps.tasks import services
from apps.tasks.models import Task, TaskAttempt, TaskStatusChange


class DeadLetteredFilter(admin.SimpleListFilter):
    title = "dead-lettered"
    parameter_name = "dead_lettered"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Dead-lettered"), ("no", "Not dead-lettered")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        if self.value() == "yes":
            return queryset.filter(dead_lettered_at__isnull=False)
        if self.value() == "no":
            return queryset.filter(dead_lettered_at__isnull=True)
        return queryset


class ReadOnlyInline(admin.TabularInline):  # type: ignore[type-arg,unused-ignore]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class AttemptInline(ReadOnlyInline):
    model = TaskAttempt
    fields = ("number", "outcome", "worker", "started_at", "finished_at", "error")
    readonly_fields = fields
    ordering = ["number"]


class StatusChangeInline(ReadOnlyInline):
    model = TaskStatusChange
    fields = ("at", "from_status", "to_status", "attempt", "actor", "note")
    readonly_fields = fields
    ordering = ["at", "id"]


def _run_for_each(
    modeladmin: Any,
    request: HttpRequest,
    queryset: QuerySet[Task],
    action: Any,
    verb: str,
) -> None:
    done, refused = 0, []
    for task in queryset:
        try:
            action(task=task, actor=request.user)
            done += 1
        except ApplicationError as exc:
            refused.append(f"{task.id}: {exc.message}")
    if done:
        modeladmin.message_user(request, f"{verb} {done} task(s).", messages.SUCCESS)
    if refused:
        modeladmin.message_user(
            request,
            f"{len(refused)} refused: " + "; ".join(refused[:10]),
            messages.WARNING,
        )


@admin.action(description="Retry selected tasks (failed, dead-lettered or cancelled)")
def retry_tasks(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Task]) -> None:
    _run_for_each(modeladmin, request, queryset, services.task_retry, "Retried")


@admin.action(description="Cancel selected tasks")
def cancel_tasks(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Task]) -> None:
    _run_for_each(modeladmin, request, queryset, services.task_cancel, "Cancelled")


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):  # type: ignore[type-arg,unused-ignore]
    list_display = [
        "id",
        "type",
        "status",
        "owner",
        "attempts",
        "progress",
        "created_at",
        "finished_at",
        "dead_letter",
    ]
    list_filter = ["status", "type", DeadLetteredFilter, "queue", "created_at", "owner"]
    search_fields = ["=id", "owner__email"]
    list_select_related = ["owner"]
    date_hierarchy = None
    show_full_result_count = False
    ordering = ["-created_at"]
    actions = [retry_tasks, cancel_tasks]
    inlines = [AttemptInline, StatusChangeInline]
    readonly_fields = (
        "id",
        "owner",
        "type",
        "queue",
        "status",
        "payload",
        "max_retries",
        "retries",
        "attempts",
        "run_at",
        "dispatch_id",
        "published_at",
        "lease_expires_at",
        "cancel_requested_at",
        "result",
        "error",
        "progress",
        "progress_message",
        "dead_lettered_at",
        "dead_letter_reason",
        "idempotency_key",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks are created through the API, which validates payloads

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Viewing is allowed; changes go through the actions (which use the services).
        return request.method in ("GET", "HEAD") and super().has_view_permission(request, obj)

    @admin.display(description="dead-lettered", ordering="dead_lettered_at")
    def dead_letter(self, task: Task) -> str:
        if task.dead_lettered_at is None:
            return ""
        return format_html(
            "{}<br><small>{}</small>", task.dead_lettered_at, task.dead_letter_reason
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        extra_context = extra_context or {}
        extra_context["dead_lettered_url"] = (
            reverse("admin:tasks_task_changelist") + "?dead_lettered=yes"
        )
        return super().changelist_view(request, extra_context=extra_context)
