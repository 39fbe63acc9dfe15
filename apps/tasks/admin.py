"""Staff's view of tasks: filters, search, read-only attempts and history, retry and cancel."""

import uuid
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.paginator import Paginator
from django.db.models import F, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.functional import cached_property
from django.utils.html import format_html

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError
from apps.core.text import ascii_digits
from apps.handlers.registry import task_types
from apps.tasks import selectors, services
from apps.tasks.models import Task, TaskAttempt, TaskStatusChange
from apps.tasks.queues import TaskQueue
from apps.tasks.states import TaskStatus

# The columns the list shows (list_display, the owner's email, the dead-letter column): the others
# are never read, and some may be large (payloads up to MAX_PAYLOAD_BYTES).
LIST_FIELDS = (
    "id",
    "type",
    "status",
    "owner__email",
    "attempts",
    "progress",
    "created_at",
    "finished_at",
    "dead_lettered_at",
    "dead_letter_reason",
)
# Below this many rows (by the estimate) the changelist counts them exactly: cheap, and the
# estimate of a small or freshly filled table can be far off.
EXACT_COUNT_BELOW = 10_000


class EstimatedCountPaginator(Paginator):
    """The unfiltered changelist's count from PostgreSQL's estimate, not a COUNT(*) over the
    whole table (Django's changelist counts on every page load: 60-200 ms at 1M rows).

    A filtered or searched list (its query has a WHERE) is counted exactly: it is what staff read
    ("12 dead-lettered"), and the filters' indexes keep it cheap. The estimate is the planner's,
    a few percent off at most after autovacuum: the last page may come out short or empty.
    """

    @cached_property
    def count(self) -> int:
        query = getattr(self.object_list, "query", None)
        if query is not None and not query.where:
            estimate = selectors.task_count_estimate()
            if estimate is not None and estimate >= EXACT_COUNT_BELOW:
                return estimate
        return super().count


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


class TypeFilter(admin.SimpleListFilter):
    """The registered task types (not a SELECT DISTINCT over every task on each page load)."""

    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(spec.name, spec.name) for spec in task_types()]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        return queryset.filter(type=self.value()) if self.value() else queryset


class QueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(queue.value, queue.value) for queue in TaskQueue]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        return queryset.filter(queue=self.value()) if self.value() else queryset


# The changelist's orderings on created_at and the primary key, with the NULLS placement of the
# all-owners index task_admin_created (DESC NULLS LAST; ASC NULLS FIRST is the same index read
# backwards). PostgreSQL's default (DESC NULLS FIRST) is the owner lists' order, which that index
# does not give on purpose (apps/tasks/models.py): in that order the changelist would sort the
# whole table for each page (0.7-2.3 s at 1M rows). Neither column is ever NULL: same rows, same
# order.
INDEXED_ORDERING = {
    "-created_at": F("created_at").desc(nulls_last=True),
    "created_at": F("created_at").asc(nulls_first=True),
    "-pk": F("id").desc(nulls_last=True),
    "pk": F("id").asc(nulls_first=True),
    "-id": F("id").desc(nulls_last=True),
    "id": F("id").asc(nulls_first=True),
}


class OwnerFilter(admin.SimpleListFilter):
    """One owner's tasks, from a link or the owner's filter chip; staff find an owner by searching
    their email. Lists the chosen owner only: Django's filter on the foreign key loaded and
    printed every user on each page load (thousands of rows and links in production)."""

    title = "owner"
    parameter_name = "owner__id__exact"  # the name of Django's own filter: links keep working

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        value = self.value()
        if not value:
            return []  # no choice shown, and none loaded
        # Also for a value that is no user id: the filter then applies (no task), not dropped.
        email = None
        if _is_user_id(value):
            email = User.objects.filter(id=int(value)).values_list("email", flat=True).first()
        return [(value, email or f"user {value}")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        value = self.value()
        if not value:
            return queryset
        if not _is_user_id(value):
            return queryset.none()
        return queryset.filter(owner_id=int(value))


def _is_user_id(value: str) -> bool:
    return ascii_digits(value)


class TaskChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: Any = None) -> Any:
        return super().get_queryset(request, exclude_parameters).only(*LIST_FIELDS)

    def get_ordering(self, request: HttpRequest, queryset: QuerySet[Task]) -> list[Any]:
        ordering = super().get_ordering(request, queryset)
        return [
            INDEXED_ORDERING.get(part, part) if isinstance(part, str) else part for part in ordering
        ]


class ReadOnlyInline(admin.TabularInline):  # type: ignore[type-arg,unused-ignore]
    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskStatusChange]:
        return super().get_queryset(request).select_related("actor")  # one query, not one a row


def _run_for_each(
    modeladmin: Any,
    request: HttpRequest,
    queryset: QuerySet[Task],
    action: Any,
    verb: str,
) -> list[Task]:
    """Apply a service to each selected task; one message for what was done, one for refusals."""
    done: list[Task] = []
    refused: list[str] = []
    for task in queryset:
        try:
            done.append(action(task=task, actor=request.user))
        except ApplicationError as exc:
            refused.append(f"{task.id}: {exc.message}")
    if done:
        modeladmin.message_user(request, f"{verb} {len(done)} task(s).", messages.SUCCESS)
    if refused:
        modeladmin.message_user(
            request,
            f"{len(refused)} refused: " + "; ".join(refused[:10]),
            messages.WARNING,
        )
    return done


@admin.action(
    description="Retry selected tasks (failed, dead-lettered or cancelled)",
    permissions=["operate"],
)
def retry_tasks(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Task]) -> None:
    _run_for_each(modeladmin, request, queryset, services.task_retry, "Retried")


@admin.action(description="Cancel selected tasks", permissions=["operate"])
def cancel_tasks(modeladmin: Any, request: HttpRequest, queryset: QuerySet[Task]) -> None:
    done = _run_for_each(modeladmin, request, queryset, services.task_cancel, "Cancelled")
    running = sum(task.status == TaskStatus.RUNNING for task in done)
    if running:
        modeladmin.message_user(
            request,
            f"{running} of them running: asked to stop; their handler ends them at its next check.",
            messages.INFO,
        )


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
    list_filter = ["status", TypeFilter, DeadLetteredFilter, QueueFilter, "created_at", OwnerFilter]
    # A task id (see get_search_results) or part of the owner's email.
    search_fields = ["owner__email"]
    search_help_text = "A task id, or part of the owner's email."
    list_select_related = ["owner"]
    date_hierarchy = None
    show_full_result_count = False  # no second count ("12 of 1,000,000")
    paginator = EstimatedCountPaginator
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
        "waiting_for_slot_since",
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
        # The change page is read-only (no form, no Save button): a task's fields belong to the
        # state machine. Changes go through the actions, which use the services.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting here would bypass the services (a running task would vanish under its worker).
        return False

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Who may run the retry and cancel actions: staff with the model's change permission."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TaskChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        try:
            task_id = uuid.UUID(search_term.strip())
        except ValueError:
            return super().get_search_results(request, queryset, search_term)
        return queryset.filter(id=task_id), False  # the primary key, not a scan of id::text

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
