"""Task reads. A user sees only their own tasks; anything else is a 404."""

import uuid
from datetime import UTC, datetime
from typing import Any, cast

import django_filters
from django import forms
from django.db import connection
from django.db.models import Prefetch, QuerySet
from django_filters.fields import IsoDateTimeField

from apps.accounts.models import User
from apps.core.exceptions import ApplicationError, NotFound, validation_summary
from apps.tasks.models import Task, TaskAttempt, TaskStatusChange
from apps.tasks.states import TaskStatus


class UTCIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, in UTC: ISO allows offsets up to ±23:59, PostgreSQL only ±15:59 (a
    created_after=...-22:19 was a database error, a 500)."""

    def to_python(self, value: Any) -> datetime | None:
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError as exc:  # past year 9999 once in UTC
            raise forms.ValidationError("Enter a valid date/time.", code="invalid") from exc


class UTCIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UTCIsoDateTimeField


class TrueFalseField(forms.Field):
    """true or false, in any case; anything else is invalid. django-filter's BooleanFilter read
    yes, 1, TRUE or on as no value, so as no filter at all, and 2 and 3 (its select widget's
    values) as true and false. An empty value is no value, as for the other filters."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_python(self, value: Any) -> bool | None:
        if value in self.empty_values:
            return None
        text = str(value).lower()
        if text not in ("true", "false"):
            raise forms.ValidationError(self.error_messages["invalid"], code="invalid")
        return text == "true"


class TrueFalseFilter(django_filters.BooleanFilter):
    field_class = TrueFalseField


class TaskFilter(django_filters.FilterSet):
    # distinct=False: the filter joins nothing, so a row cannot appear twice, and django-filter's
    # default SELECT DISTINCT over every column made PostgreSQL sort all the matching rows before
    # the LIMIT (~30 ms at 1M rows for status=failed&type=fetch_url) instead of reading a page of
    # the index task_owner_status_created in order.
    status = django_filters.MultipleChoiceFilter(choices=TaskStatus.choices, distinct=False)
    type = django_filters.CharFilter(field_name="type")
    created_after = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UTCIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")
    dead_lettered = TrueFalseFilter(
        field_name="dead_lettered_at", lookup_expr="isnull", exclude=True
    )

    class Meta:
        model = Task
        fields = ["status", "type", "created_after", "created_before", "dead_lettered"]


# The columns the list shows (apps.tasks.api.TaskListItemSerializer): not the payload and result
# (up to MAX_PAYLOAD_BYTES each), nor the bookkeeping columns (dispatch, lease, idempotency).
LIST_FIELDS = (
    "id",
    "type",
    "status",
    "queue",
    "max_retries",
    "retries",
    "attempts",
    "run_at",
    "progress",
    "progress_message",
    "cancel_requested_at",
    "error",
    "dead_lettered_at",
    "dead_letter_reason",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)


class OrderedUnion:
    """Querysets of tasks read as one list in one order, one page at a time: what DRF's cursor
    pagination needs of a queryset (order_by, filter by the cursor's position, a slice), no more.

    For ?status=failed&status=cancelled: `status IN (...)` cannot be read in order from an index
    (task_owner_status_pending is ordered by status first), so PostgreSQL walked the owner's rows
    newest first and threw away those of other statuses (or sorted all the matches): the rarer the
    statuses, the longer. Here each status is its own part, read in index order with the page's
    LIMIT, and PostgreSQL merges the parts' pages (UNION ALL: a Merge Append of index scans), so a
    page costs about what one status costs, however rare.
    """

    def __init__(self, parts: list[QuerySet[Task]], ordering: tuple[str, ...] = ()) -> None:
        self.parts = parts
        self.ordering = ordering

    def order_by(self, *ordering: str) -> "OrderedUnion":
        return OrderedUnion([part.order_by(*ordering) for part in self.parts], ordering)

    def filter(self, *args: Any, **kwargs: Any) -> "OrderedUnion":
        return OrderedUnion([part.filter(*args, **kwargs) for part in self.parts], self.ordering)

    def __getitem__(self, window: slice) -> QuerySet[Task]:
        if not isinstance(window, slice) or window.stop is None or window.step is not None:
            raise TypeError("OrderedUnion only gives a slice with an end")
        if not self.ordering:
            raise TypeError("OrderedUnion needs an order (order_by) before a slice")
        # The first `stop` rows of the whole are among the first `stop` rows of each part.
        heads = [part[: window.stop] for part in self.parts]
        return heads[0].union(*heads[1:], all=True).order_by(*self.ordering)[window]


def task_list(*, user: User, filters: dict[str, Any] | None = None) -> QuerySet[Task]:
    """The user's tasks, filtered. An invalid filter value is a 400, never "no filter at all".

    With several statuses, an OrderedUnion: typed as the QuerySet it stands in for, as far as
    the list's cursor pagination uses one (order_by, filter, a slice); nothing else may."""
    queryset = Task.objects.filter(owner=user).only(*LIST_FIELDS)
    if not filters or not any(name in filters for name in TaskFilter.base_filters):
        return queryset  # no filter asked (a first or cursor page): no FilterSet and its form
    filterset = TaskFilter(filters, queryset=queryset)
    if not filterset.is_valid():
        fields = {name: [str(m) for m in messages] for name, messages in filterset.errors.items()}
        raise ApplicationError(
            f"Invalid filter: {validation_summary(fields)}", code="validation_error", fields=fields
        )
    statuses = set(filterset.form.cleaned_data.get("status") or ())
    if len(statuses) < 2:
        return filterset.qs
    # Several statuses: every other filter on each, one part per status (OrderedUnion says why).
    for name, value in filterset.form.cleaned_data.items():
        if name != "status":
            queryset = filterset.filters[name].filter(queryset, value)
    if statuses >= set(TaskStatus.values):
        return queryset  # every status: no status filter at all
    parts = [queryset.filter(status=status) for status in sorted(statuses)]
    return cast(QuerySet[Task], OrderedUnion(parts))


def task_get(*, user: User, task_id: uuid.UUID | str) -> Task:
    task = Task.objects.filter(owner=user, id=task_id).first()
    if task is None:
        raise NotFound("No such task.", code="task_not_found")
    return task


def task_get_with_history(*, user: User, task_id: uuid.UUID | str) -> Task:
    task = (
        Task.objects.filter(owner=user, id=task_id)
        .prefetch_related(
            Prefetch("attempt_rows", queryset=TaskAttempt.objects.order_by("number")),
            Prefetch("status_changes", queryset=TaskStatusChange.objects.order_by("at", "id")),
        )
        .first()
    )
    if task is None:
        raise NotFound("No such task.", code="task_not_found")
    return task


def task_count_estimate() -> int | None:
    """About how many rows the task table holds, without reading it: the planner's own estimate
    (pg_class.reltuples, as of the last VACUUM or ANALYZE, scaled to the table's current size in
    pages, as the planner scales it). None if the table was never analysed. A COUNT(*) reads the
    whole table: 60-200 ms at 1M rows, and growing with it."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT CASE WHEN c.reltuples < 0 THEN NULL"
            " WHEN c.relpages = 0 THEN c.reltuples"
            " ELSE c.reltuples / c.relpages"
            " * (pg_relation_size(c.oid) / current_setting('block_size')::int) END"
            " FROM pg_class c WHERE c.oid = %s::regclass",
            [Task._meta.db_table],
        )
        row = cursor.fetchone()
    return None if row is None or row[0] is None else int(row[0])
