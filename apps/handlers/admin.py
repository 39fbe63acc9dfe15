"""Task types in the admin: switch a type on or off, override its settings, set its cluster-wide
limits, and create webhook types (a handler in any language, no deploy).

The list shows, per type, its tasks in each state (from the monitoring rollup, a few rows per
type) and its last failure (one index probe per type), in the list's one query.
"""

import secrets
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.postgres.aggregates import JSONBAgg
from django.db.models import F, JSONField, OuterRef, QuerySet, Subquery
from django.db.models.functions import JSONObject, Left
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from jsonschema.exceptions import SchemaError
from rest_framework import serializers

from apps.handlers import limits, services
from apps.handlers.fields import HttpUrlField
from apps.handlers.models import TaskType, TaskTypeKind
from apps.handlers.registry import TYPE_NAME, TaskTypeSpec, code_task_types, get_task_type
from apps.handlers.webhooks import (
    DEFAULT_TIMEOUT_SECONDS,
    TIME_LIMIT_MARGIN_SECONDS,
    check_json_schema,
)
from apps.monitoring.models import ALL_OWNERS, TaskCount
from apps.tasks.models import Task
from apps.tasks.publisher import HARD_LIMIT_MARGIN_SECONDS
from apps.tasks.states import TaskStatus

# The most retries staff may allow a type (the column's own limit is far higher).
MAX_RETRIES_CEILING = 100
ERROR_EXCERPT = 200

OVERRIDES = (
    "queue",
    "default_max_retries",
    "max_retries_limit",
    "backoff_base_seconds",
    "backoff_cap_seconds",
    "time_limit_seconds",
)
LIMITS = ("rate_limit_count", "rate_limit_period", "concurrency_limit")
WEBHOOK = ("url", "signing_secret", "timeout_seconds", "payload_json_schema")


def code_defaults(spec: TaskTypeSpec | None) -> dict[str, tuple[Any, str]]:
    """What an empty override field means for a type, and where that comes from: {field: (value,
    "the code's" or "the platform's")}. `spec` None: a webhook type."""
    tf = settings.TASKFLOW
    platform = "the platform's"
    defaults: dict[str, tuple[Any, str]] = {
        "queue": ("io", platform),
        "default_max_retries": (tf["DEFAULT_MAX_RETRIES"], platform),
        "max_retries_limit": (tf["MAX_RETRIES_LIMIT"], platform),
        "backoff_base_seconds": (tf["RETRY_BACKOFF_BASE_SECONDS"], platform),
        "backoff_cap_seconds": (tf["RETRY_BACKOFF_CAP_SECONDS"], platform),
        "time_limit_seconds": (settings.CELERY_TASK_TIME_LIMIT, platform),
    }
    if spec is None:
        defaults["time_limit_seconds"] = (f"the timeout + {TIME_LIMIT_MARGIN_SECONDS}", platform)
        return defaults
    for field, value in (
        ("queue", spec.queue.value),
        ("default_max_retries", spec.max_retries),
        ("max_retries_limit", spec.max_retries_limit),
        ("backoff_base_seconds", spec.backoff_base_seconds),
        ("backoff_cap_seconds", spec.backoff_cap_seconds),
        ("time_limit_seconds", spec.time_limit_seconds),
    ):
        if value is not None:
            defaults[field] = (value, "the code's")
    return defaults


class _UrlField(forms.URLField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("assume_scheme", "https")  # Django 6's default, without its warning
        super().__init__(**kwargs)


class TaskTypeForm(forms.ModelForm):
    class Meta:
        model = TaskType
        fields = ("name", "enabled", "description", *WEBHOOK, *OVERRIDES, *LIMITS)
        field_classes = {"url": _UrlField}
        help_texts = {"url": "Where workers POST this type's tasks (http or https)."}
        widgets = {
            "url": forms.URLInput(attrs={"size": 80}),
            "signing_secret": forms.TextInput(attrs={"size": 60, "autocomplete": "off"}),
            "payload_json_schema": forms.Textarea(attrs={"rows": 12, "cols": 80}),
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "signing_secret" in self.fields:
            self.fields["signing_secret"].help_text = (
                "The key of the X-TaskFlow-Signature HMAC; give it to the receiving service. "
                "Left empty, a random one is made."
            )
        if "payload_json_schema" in self.fields:
            self.fields["payload_json_schema"].help_text = (
                'Optional JSON Schema for the payload, e.g. {"type": "object", "required": '
                '["order_id"]}: tasks whose payload breaks it are refused with a 400.'
            )
        if "timeout_seconds" in self.fields:
            self.fields[
                "timeout_seconds"
            ].help_text = f"Seconds for the request (default {DEFAULT_TIMEOUT_SECONDS:g})."

    def _kind(self) -> str:
        if self.instance.pk:
            return str(self.instance.kind)
        return TaskTypeKind.WEBHOOK  # the admin adds webhook types only

    def clean_name(self) -> str:
        name = str(self.cleaned_data["name"]).strip()
        if self.instance.pk:
            return str(self.instance.name)
        if not TYPE_NAME.match(name):
            raise forms.ValidationError(
                "Use lowercase letters, digits, _ . - (starting with a letter), at most 100."
            )
        if name in code_task_types():
            raise forms.ValidationError(f"{name!r} is a code type's name.")
        return name

    def clean_url(self) -> str:
        url = str(self.cleaned_data.get("url") or "")
        if self._kind() != TaskTypeKind.WEBHOOK:
            return url
        if not url:
            raise forms.ValidationError("A webhook type needs the URL to POST its tasks to.")
        try:
            return str(HttpUrlField().run_validation(url))
        except serializers.ValidationError as exc:
            raise forms.ValidationError(" ".join(str(m) for m in exc.detail)) from exc

    def clean_signing_secret(self) -> str:
        secret = str(self.cleaned_data.get("signing_secret") or "").strip()
        if self._kind() == TaskTypeKind.WEBHOOK and not secret:
            secret = secrets.token_urlsafe(32)
        return secret

    def clean_payload_json_schema(self) -> Any:
        schema = self.cleaned_data.get("payload_json_schema")
        if schema is None:
            return None
        try:
            check_json_schema(schema)
        except SchemaError as exc:
            raise forms.ValidationError(f"Not a valid JSON Schema: {exc.message}") from exc
        return schema

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        spec = code_task_types().get(str(self.instance.name)) if self.instance.pk else None
        if self._kind() == TaskTypeKind.WEBHOOK:
            spec = None
        defaults = code_defaults(spec)

        def effective(field: str) -> Any:
            value = data.get(field)
            return defaults[field][0] if value in (None, "") else value

        limit = effective("max_retries_limit")
        if limit is not None and limit > MAX_RETRIES_CEILING:
            self.add_error("max_retries_limit", f"At most {MAX_RETRIES_CEILING}.")
        elif effective("default_max_retries") > limit:
            self.add_error(
                "default_max_retries", f"More than the maximum retries allowed ({limit})."
            )
        if effective("backoff_base_seconds") > effective("backoff_cap_seconds"):
            self.add_error("backoff_cap_seconds", "The cap must be at least the base.")
        consumer_timeout = settings.TASKFLOW["RABBITMQ_CONSUMER_TIMEOUT_SECONDS"]
        time_limit = data.get("time_limit_seconds")
        if time_limit is None and self._kind() == TaskTypeKind.WEBHOOK:
            timeout = data.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS
            time_limit = int(timeout) + 1 + TIME_LIMIT_MARGIN_SECONDS
        if time_limit and time_limit + HARD_LIMIT_MARGIN_SECONDS >= consumer_timeout:
            field = "time_limit_seconds" if data.get("time_limit_seconds") else "timeout_seconds"
            self.add_error(
                field,
                f"The attempt's time limit ({time_limit}s) plus {HARD_LIMIT_MARGIN_SECONDS}s must "
                f"stay under RabbitMQ's consumer_timeout ({consumer_timeout}s).",
            )
        return data


@admin.action(description="Enable selected types", permissions=["change"])
def enable_types(modeladmin: Any, request: HttpRequest, queryset: QuerySet[TaskType]) -> None:
    for task_type in queryset:
        services.task_type_set_enabled(task_type=task_type, enabled=True)
    modeladmin.message_user(request, f"Enabled {queryset.count()} type(s).", messages.SUCCESS)


@admin.action(description="Disable selected types", permissions=["change"])
def disable_types(modeladmin: Any, request: HttpRequest, queryset: QuerySet[TaskType]) -> None:
    for task_type in queryset:
        services.task_type_set_enabled(task_type=task_type, enabled=False)
    modeladmin.message_user(
        request,
        f"Disabled {queryset.count()} type(s): new tasks are refused; queued ones wait.",
        messages.SUCCESS,
    )


@admin.register(TaskType)
class TaskTypeAdmin(admin.ModelAdmin):  # type: ignore[type-arg,unused-ignore]
    form = TaskTypeForm
    list_display = [
        "name",
        "kind",
        "enabled",
        "queue_shown",
        "retries_shown",
        "limits_shown",
        "tasks_now",
        "last_failure",
    ]
    list_filter = ["kind", "enabled"]
    search_fields = ["name"]
    ordering = ["name"]
    actions = [enable_types, disable_types]
    show_full_result_count = False

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskType]:
        last_failed = (
            Task.objects.filter(type=OuterRef("name"), status=TaskStatus.FAILED)
            .order_by(F("finished_at").desc())
            .values(json=JSONObject(id="id", at="finished_at", error=Left("error", ERROR_EXCERPT)))
        )[:1]
        # Everyone's counts (owner ALL_OWNERS) by status, over the rollup's shards: a few rows.
        counts = (
            TaskCount.objects.filter(owner_id=ALL_OWNERS, type=OuterRef("name"), n__gt=0)
            .values("type")
            .annotate(rows=JSONBAgg(JSONObject(status="status", n="n")))
            .values("rows")
        )
        return (
            super()
            .get_queryset(request)
            .annotate(
                counts_now=Subquery(counts, output_field=JSONField()),
                last_failed=Subquery(last_failed, output_field=JSONField()),
            )
        )

    # --- The list ---------------------------------------------------------------------------

    @admin.display(description="queue")
    def queue_shown(self, row: TaskType) -> str:
        spec = get_task_type(row.name)
        return spec.queue.value if spec else (row.queue or "—")

    @admin.display(description="retries (default / max)")
    def retries_shown(self, row: TaskType) -> str:
        spec = get_task_type(row.name)
        if spec is None:
            return "—"
        return f"{spec.default_max_retries} / {spec.retries_limit}"

    @admin.display(description="limits")
    def limits_shown(self, row: TaskType) -> str:
        parts = []
        if row.rate_limit_count:
            parts.append(
                f"{row.rate_limit_count}/{'s' if row.rate_limit_period == 'second' else 'min'}"
            )
        if row.concurrency_limit:
            parts.append(f"{row.concurrency_limit} at once")
        return " · ".join(parts) or "—"

    @admin.display(description="tasks now")
    def tasks_now(self, row: TaskType) -> str:
        counts: dict[str, int] = {}
        for item in getattr(row, "counts_now", None) or []:
            counts[item["status"]] = counts.get(item["status"], 0) + int(item["n"])
        base = reverse("admin:tasks_task_changelist")
        shown = [
            (
                f"{base}?type={row.name}&status__exact={status.value}",
                status.value,
                int(counts[status]),
            )
            for status in TaskStatus
            if int(counts.get(status, 0) or 0)
        ]
        if not shown:
            return "—"
        return format_html_join(" · ", '<a href="{}">{} {}</a>', shown)

    @admin.display(description="last failure")
    def last_failure(self, row: TaskType) -> str:
        failed: dict[str, Any] | None = getattr(row, "last_failed", None)
        if not failed:
            return "—"
        url = reverse("admin:tasks_task_change", args=[failed["id"]])
        return format_html(
            '<a href="{}">{}</a><br><small>{}</small>',
            url,
            str(failed.get("at") or "")[:19].replace("T", " "),
            failed.get("error") or "",
        )

    # --- The form -----------------------------------------------------------------------------

    def get_fieldsets(self, request: HttpRequest, obj: Any = None) -> Any:
        is_webhook = obj is None or obj.kind == TaskTypeKind.WEBHOOK
        head: tuple[str, ...] = ("name", "kind", "enabled", "description")
        if obj is None:  # a new webhook type
            head = ("name", "enabled", "description")
        elif not is_webhook:
            head = ("name", "kind", "enabled", "code_description")
        fieldsets: list[tuple[str | None, dict[str, Any]]] = [(None, {"fields": head})]
        if is_webhook:
            fieldsets.append(
                (
                    "Webhook",
                    {
                        "fields": WEBHOOK,
                        "description": "A worker POSTs {id, type, payload, attempt} to the URL, "
                        "signed with X-TaskFlow-Signature (see docs/handlers.md). 2xx with JSON: "
                        "success (the body is the result); 4xx: failed; 5xx, timeouts: retried.",
                    },
                )
            )
        fieldsets.append(
            (
                "Settings (empty: the default shown under each field)",
                {"fields": OVERRIDES},
            )
        )
        fieldsets.append(
            (
                "Cluster-wide limits (empty: none)",
                {
                    "fields": LIMITS,
                    "description": "A task held back by a limit waits (postponed, history "
                    "note 'held: ...'); it is not failed and uses no retry.",
                },
            )
        )
        if obj is not None:
            fieldsets.append(("Record", {"fields": ("created_at", "updated_at")}))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        if obj is None:
            return ()
        readonly = ["name", "kind", "created_at", "updated_at"]
        if obj.kind == TaskTypeKind.CODE:
            readonly.append("code_description")
        return readonly

    @admin.display(description="description")
    def code_description(self, row: TaskType) -> str:
        spec = code_task_types().get(row.name)
        return spec.description if spec else "(the code of this type is not installed here)"

    def get_form(
        self, request: HttpRequest, obj: Any = None, change: bool = False, **kwargs: Any
    ) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        spec = code_task_types().get(obj.name) if obj and obj.kind == TaskTypeKind.CODE else None
        for field, (value, source) in code_defaults(spec).items():
            if field in form.base_fields:
                base = str(getattr(TaskType._meta.get_field(field), "help_text", ""))
                help_text = f"{base} Empty: {source} default, {value}.".strip()
                form.base_fields[field].help_text = help_text
        return form

    def save_model(self, request: HttpRequest, obj: TaskType, form: Any, change: bool) -> None:
        if not change:
            obj.kind = TaskTypeKind.WEBHOOK
        services.task_type_save(task_type=obj)

    def delete_model(self, request: HttpRequest, obj: TaskType) -> None:
        services.task_type_delete(task_type=obj)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A code type's row goes with its code; disable it to stop it.
        if obj is not None and obj.kind == TaskTypeKind.CODE:
            return False
        return super().has_delete_permission(request, obj)

    def get_actions(self, request: HttpRequest) -> Any:
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would delete code types' rows too
        return actions

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> Any:
        # A plugin installed since the last `setup_broker` shows up here at once.
        services.task_types_sync()
        limited = TaskType.objects.filter(rate_limit_count__isnull=False).exists()
        if limited and not limits.rate_limits_enforced():
            self.message_user(
                request,
                "Redis does not answer: the tasks of rate-limited types are HELD until it is back "
                "(RATE_LIMITS_WITHOUT_REDIS=closed). Concurrency limits hold, through PostgreSQL."
                if limits.fails_closed()
                else "Redis does not answer: rate limits are NOT enforced now (tasks start "
                "unlimited until it is back). Concurrency limits are, through PostgreSQL.",
                messages.WARNING,
            )
        return super().changelist_view(request, extra_context=extra_context)
