"""Staff's view of schedules: who, what, when, and why the last firing created nothing."""

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from apps.schedules import services
from apps.schedules.models import Schedule


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "owner",
        "type",
        "timing",
        "enabled",
        "next_run_at",
        "last_run_at",
        "last_error",
    )
    list_filter = ("enabled", "type")
    search_fields = ("name", "owner__email", "type")
    list_select_related = ("owner",)
    ordering = ("next_run_at",)
    actions = ("enable", "disable")
    # Changes go through the API (services check the payload and compute next_run_at); the admin
    # shows schedules, and switches them on and off.
    readonly_fields = [f.name for f in Schedule._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="cron / every")
    def timing(self, schedule: Schedule) -> str:
        return schedule.timing

    def _report(self, request: HttpRequest, done: str, refused: dict[str, str]) -> None:
        self.message_user(request, done, messages.SUCCESS)
        for name, problem in refused.items():
            self.message_user(request, f"{name}: {problem}", messages.ERROR)

    @admin.action(description="Enable the selected schedules", permissions=["change"])
    def enable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        changed, refused = services.schedules_set_enabled(
            schedule_ids=list(queryset.values_list("id", flat=True)), enabled=True
        )
        self._report(request, f"Enabled {changed} schedule(s).", refused)

    @admin.action(description="Disable the selected schedules", permissions=["change"])
    def disable(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        changed, refused = services.schedules_set_enabled(
            schedule_ids=list(queryset.values_list("id", flat=True)), enabled=False
        )
        self._report(request, f"Disabled {changed} schedule(s).", refused)
