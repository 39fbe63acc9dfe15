"""Rollup upkeep: fold minutes older than the statistics window into the per-type totals."""

from datetime import datetime, timedelta

from django.db import connection
from django.utils import timezone

from apps.monitoring.models import ALL_OWNERS, TaskMinuteStat, TaskTotal

# Minutes are kept a while past the API's one-hour window.
RETENTION = timedelta(hours=2)

_COUNTERS = (
    "created",
    "started",
    "succeeded",
    "failed",
    "retried",
    "cancelled",
    "dead_lettered",
    "replayed",
    "wait_count",
    "wait_sum",
    "run_count",
    "run_sum",
)


def fold_minute_stats(*, before: datetime | None = None) -> int:
    """Move everyone's TaskMinuteStat rows older than `before` into TaskTotal and drop the
    per-owner ones, in one statement (a reader sees the rows either here or there, never in both
    nor in neither). Returns the number of minute rows removed."""
    if before is None:
        before = timezone.now() - RETENTION
    minutes, totals = TaskMinuteStat._meta.db_table, TaskTotal._meta.db_table
    sums = ", ".join(f"sum({c})" for c in _COUNTERS)
    adds = ", ".join(f"{c} = t.{c} + EXCLUDED.{c}" for c in _COUNTERS)
    sql = f"""
        WITH moved AS (DELETE FROM {minutes} WHERE minute < %s RETURNING *),
        folded AS (
            INSERT INTO {totals} AS t (type, {", ".join(_COUNTERS)}, wait_buckets, run_buckets)
            SELECT type, {sums},
                monitoring_array_sum(wait_buckets), monitoring_array_sum(run_buckets)
            FROM moved WHERE owner_id = %s GROUP BY type ORDER BY type
            ON CONFLICT (type) DO UPDATE SET {adds},
                wait_buckets = monitoring_array_add(t.wait_buckets, EXCLUDED.wait_buckets),
                run_buckets = monitoring_array_add(t.run_buckets, EXCLUDED.run_buckets)
        )
        SELECT count(*) FROM moved
    """  # noqa: S608 (table and column names only)
    with connection.cursor() as cursor:
        cursor.execute(sql, [before, ALL_OWNERS])
        return int(cursor.fetchone()[0])
