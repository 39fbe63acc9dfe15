"""Statistics reads. They read the rollups (apps/monitoring/models.py) and small indexed ranges of
tasks, never a count over the whole tasks table.

`owner_id=None` means everyone's tasks (staff); otherwise one owner's.
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.db import connection
from django.db.models import QuerySet, Sum

from apps.monitoring.models import ALL_OWNERS, HISTOGRAM_BOUNDS, TaskCount, TaskMinuteStat
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus

WINDOW_MINUTES = 60
QUANTILES = (0.5, 0.95, 0.99)
EVENTS = (
    "created",
    "started",
    "succeeded",
    "failed",
    "retried",
    "cancelled",
    "dead_lettered",
    "replayed",
)


def quantile(q: float, buckets: Sequence[int] | None) -> float | None:
    """The q-quantile of a histogram (counts per bucket of HISTOGRAM_BOUNDS), interpolated
    linearly inside its bucket as Prometheus' histogram_quantile does. None without data."""
    if not buckets:
        return None
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    cumulative = 0
    for index, count in enumerate(buckets):
        if count and cumulative + count >= rank:
            upper = HISTOGRAM_BOUNDS[index]
            lower = HISTOGRAM_BOUNDS[index - 1] if index else 0.0
            if math.isinf(upper):
                return lower  # beyond the last finite bound: that bound is all we know
            return lower + (upper - lower) * (rank - cumulative) / count
        cumulative += count
    return HISTOGRAM_BOUNDS[-2]


@dataclass
class Timing:
    count: int = 0
    sum: float = 0.0
    buckets: list[int] = field(default_factory=lambda: [0] * len(HISTOGRAM_BOUNDS))

    def add(self, count: int, total: float, buckets: Sequence[int] | None) -> None:
        self.count += count
        self.sum += total
        for index, value in enumerate(buckets or ()):
            self.buckets[index] += value

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"count": self.count}
        for q in QUANTILES:
            value = quantile(q, self.buckets)
            out[f"p{round(q * 100)}"] = None if value is None else round(value, 4)
        return out


@dataclass
class TypeEvents:
    events: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENTS, 0))
    wait: Timing = field(default_factory=Timing)
    run: Timing = field(default_factory=Timing)


def task_counts(*, owner_id: int | None) -> dict[str, dict[str, int]]:
    """Tasks now, {type: {status: n}}, from the TaskCount rollup."""
    rows = TaskCount.objects.filter(owner_id=ALL_OWNERS if owner_id is None else owner_id)
    counts: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows.values("type", "status").annotate(total=Sum("n")).order_by("type", "status"):
        if row["total"]:
            counts[row["type"]][row["status"]] = int(row["total"])
    return dict(counts)


def _minute_rows(*, owner_id: int | None, since: datetime) -> QuerySet[TaskMinuteStat]:
    return TaskMinuteStat.objects.filter(
        minute__gte=since, owner_id=ALL_OWNERS if owner_id is None else owner_id
    )


def window_start(now: datetime, minutes: int = WINDOW_MINUTES) -> datetime:
    """The first minute of the window of `minutes` minutes that ends with the current one."""
    return now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)


def throughput(*, owner_id: int | None, now: datetime) -> list[dict[str, Any]]:
    """Tasks finished per minute over the last hour, oldest first, every minute present."""
    since = window_start(now)
    per_minute: dict[datetime, dict[str, Any]] = {
        row["minute"]: dict(row)
        for row in _minute_rows(owner_id=owner_id, since=since)
        .values("minute")
        .annotate(succeeded=Sum("succeeded"), failed=Sum("failed"))
        .order_by("minute")
    }
    out = []
    for offset in range(WINDOW_MINUTES):
        minute = since + timedelta(minutes=offset)
        row = per_minute.get(minute, {})
        out.append(
            {
                "minute": minute,
                "succeeded": int(row.get("succeeded") or 0),
                "failed": int(row.get("failed") or 0),
            }
        )
    return out


_EVENT_SUMS = ", ".join(f"sum({name})" for name in EVENTS)
_TIMING_SUMS = (
    "sum(wait_count), sum(wait_sum), monitoring_array_sum(wait_buckets), "
    "sum(run_count), sum(run_sum), monitoring_array_sum(run_buckets)"
)


def _events_by_type(sql: str, params: Sequence[Any]) -> dict[str, TypeEvents]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        rows = cursor.fetchall()
    out: dict[str, TypeEvents] = {}
    for row in rows:
        type_, counters, timings = row[0], row[1 : 1 + len(EVENTS)], row[1 + len(EVENTS) :]
        item = out.setdefault(type_, TypeEvents())
        for name, value in zip(EVENTS, counters, strict=True):
            item.events[name] += int(value or 0)
        item.wait.add(int(timings[0] or 0), float(timings[1] or 0), timings[2])
        item.run.add(int(timings[3] or 0), float(timings[4] or 0), timings[5])
    return out


def window_events(*, owner_id: int | None, now: datetime) -> dict[str, TypeEvents]:
    """Per type: what happened in the last hour, with the queue-wait and run-time histograms."""
    table = TaskMinuteStat._meta.db_table
    return _events_by_type(
        f"SELECT type, {_EVENT_SUMS}, {_TIMING_SUMS} FROM {table} "  # noqa: S608 (names only)
        "WHERE minute >= %s AND owner_id = %s GROUP BY type ORDER BY type",
        [window_start(now), ALL_OWNERS if owner_id is None else owner_id],
    )


def total_events() -> dict[str, TypeEvents]:
    """Per type, everything since the rollups exist (folded totals plus the recent minutes), in
    one statement, so that a concurrent fold is seen entirely or not at all."""
    from apps.monitoring.models import TaskTotal

    columns = f"type, {', '.join(EVENTS)}, wait_count, wait_sum, wait_buckets, run_count, " + (
        "run_sum, run_buckets"
    )
    return _events_by_type(
        f"SELECT type, {_EVENT_SUMS}, {_TIMING_SUMS} FROM ("  # noqa: S608 (names only)
        f"SELECT {columns} FROM {TaskTotal._meta.db_table} UNION ALL "
        f"SELECT {columns} FROM {TaskMinuteStat._meta.db_table} WHERE owner_id = %s"
        ") AS everything GROUP BY type ORDER BY type",
        [ALL_OWNERS],
    )


def recent_failures(*, owner_id: int | None, limit: int = 10) -> QuerySet[Task]:
    """The latest failed tasks (partial indexes monitoring_task_failed / _owner_failed)."""
    tasks = Task.objects.filter(status=TaskStatus.FAILED)
    if owner_id is not None:
        tasks = tasks.filter(owner_id=owner_id)
    return (
        tasks.select_related("owner")
        .only(
            "id",
            "type",
            "status",
            "error",
            "attempts",
            "finished_at",
            "dead_lettered_at",
            "dead_letter_reason",
            "owner__email",
        )
        .order_by("-finished_at")[:limit]
    )


def running_tasks(*, owner_id: int | None, limit: int = 20) -> QuerySet[Task]:
    """Tasks running now, with their progress (partial index task_running_lease)."""
    tasks = Task.objects.filter(status=TaskStatus.RUNNING)
    if owner_id is not None:
        tasks = tasks.filter(owner_id=owner_id)
    return (
        tasks.select_related("owner")
        .only(
            "id",
            "type",
            "status",
            "attempts",
            "progress",
            "progress_message",
            "started_at",
            "owner__email",
        )
        .order_by("started_at", "id")[:limit]
    )


def task_stats(*, owner_id: int | None, now: datetime) -> dict[str, Any]:
    """Everything /api/stats says about tasks (the broker's part is added by the view)."""
    counts = task_counts(owner_id=owner_id)
    events = window_events(owner_id=owner_id, now=now)
    totals = dict.fromkeys(TaskStatus.values, 0)
    types = []
    for type_ in sorted(set(counts) | set(events)):
        by_status = {status: counts.get(type_, {}).get(status, 0) for status in TaskStatus.values}
        for status, n in by_status.items():
            totals[status] += n
        item = events.get(type_, TypeEvents())
        types.append(
            {
                "type": type_,
                "total": sum(by_status.values()),
                "counts": by_status,
                "last_hour": item.events,
                "queue_wait_seconds": item.wait.summary(),
                "run_seconds": item.run.summary(),
            }
        )
    return {
        "generated_at": now,
        "window_minutes": WINDOW_MINUTES,
        "total": sum(totals.values()),
        "counts": totals,
        "types": types,
        "throughput": throughput(owner_id=owner_id, now=now),
        "running": list(running_tasks(owner_id=owner_id)),
        "recent_failures": list(recent_failures(owner_id=owner_id)),
    }
