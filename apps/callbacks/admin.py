"""Staff's view of the completion callbacks: what is owed, delivered or given up, and why."""

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.callbacks import services
from apps.callbacks.models import CallbackState, TaskCallback


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(state.value, state.label) for state in CallbackState]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        value = self.value()
        if value == CallbackState.DELIVERED:
            return queryset.filter(delivered_at__isnull=False)
        if value == CallbackState.FAILED:
            return queryset.filter(failed_at__isnull=False)
        if value == CallbackState.PENDING:
            return queryset.filter(delivered_at__isnull=True, failed_at__isnull=True)
        return queryset


@admin.register(TaskCallback)
class TaskCallbackAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "task_id",
        "event",
        "url",
        "state",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
    )
    list_filter = (StateFilter, "status")
    search_fields = ("url",)
    ordering = ("-created_at", "-id")
    show_full_result_count = False  # the outbox can be large: no COUNT(*) per page
    actions = ("send_again",)
    # Written by the transitions and the deliveries only; staff can send one again.
    readonly_fields = [f.name for f in TaskCallback._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="state")
    def state(self, callback: TaskCallback) -> str:
        return callback.state.label

    @admin.action(description="Send the selected callbacks again", permissions=["change"])
    def send_again(self, request: HttpRequest, queryset: QuerySet[TaskCallback]) -> None:
        changed = services.callbacks_send_again(ids=list(queryset.values_list("id", flat=True)))
        self.message_user(request, f"{changed} callback(s) will be sent again.", messages.SUCCESS)
