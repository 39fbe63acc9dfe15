"""Reads with many rows: seed the task table fast (one INSERT ... SELECT generate_series), then
time the list, a deep cursor page, a filtered list, a task, /api/stats and the admin list."""

import base64
import re
import time
from typing import Any
from urllib.parse import quote, urlencode

from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.tasks.models import Task

TYPES = ["echo", "send_email", "fetch_url", "process_image", "long_computation"]

# 90% succeeded, 5% failed (half of them dead-lettered), 2% cancelled, 1% queued, 1% postponed,
# 1% running; one task every 2 seconds going back in time, an hour before now.
SEED_SQL = """
INSERT INTO tasks_task (
    id, owner_id, type, payload, queue, status, max_retries, retries, attempts, run_at,
    dispatch_id, published_at, lease_expires_at, cancel_requested_at, result, error, progress,
    progress_message, dead_lettered_at, dead_letter_reason, idempotency_key,
    idempotency_fingerprint, created_at, updated_at, started_at, finished_at)
SELECT
    gen_random_uuid(), (%(owners)s::bigint[])[1 + g %% %(owner_count)s],
    (%(types)s::text[])[1 + (g / 7) %% %(type_count)s], jsonb_build_object('n', g), 'default',
    st, 3, 0, CASE WHEN st IN ('queued', 'postponed') THEN 0 ELSE 1 END,
    CASE WHEN st = 'postponed' THEN now() + interval '1 day' END,
    CASE WHEN st = 'queued' THEN gen_random_uuid() END,
    CASE WHEN st = 'queued' THEN c END,
    NULL, NULL,
    CASE WHEN st = 'succeeded' THEN jsonb_build_object('n', g) END,
    CASE WHEN st = 'failed' THEN 'ValueError: seeded by the bench' ELSE '' END,
    CASE WHEN st = 'succeeded' THEN 100 ELSE 0 END, '',
    CASE WHEN st = 'failed' AND g %% 2 = 0 THEN c + interval '1 minute' END,
    CASE WHEN st = 'failed' AND g %% 2 = 0 THEN 'rejected' ELSE '' END,
    NULL, '', c, c,
    CASE WHEN st NOT IN ('queued', 'postponed') THEN c END,
    CASE WHEN st IN ('succeeded', 'failed', 'cancelled') THEN c + interval '1 second' END
FROM (
    SELECT g, now() - interval '1 hour' - g * interval '2 seconds' AS c,
        CASE WHEN g %% 100 < 90 THEN 'succeeded' WHEN g %% 100 < 95 THEN 'failed'
             WHEN g %% 100 < 97 THEN 'cancelled' WHEN g %% 100 < 98 THEN 'queued'
             WHEN g %% 100 < 99 THEN 'postponed' ELSE 'running' END AS st
    FROM generate_series(%(first)s, %(last)s) AS g
) AS rows
"""


def seed(*, total_rows: int, owner_ids: list[int], chunk: int = 250_000) -> dict[str, Any]:
    """Top the task table up to `total_rows` rows, spread over `owner_ids`; then VACUUM ANALYZE
    (as autovacuum would do on a table of that size)."""
    existing = Task.objects.count()
    missing = max(0, total_rows - existing)
    began = time.time()
    with connection.cursor() as cursor:
        for first in range(1, missing + 1, chunk):
            cursor.execute(
                SEED_SQL,
                {
                    "owners": owner_ids,
                    "owner_count": len(owner_ids),
                    "types": TYPES,
                    "type_count": len(TYPES),
                    "first": first,
                    "last": min(missing, first + chunk - 1),
                },
            )
        inserted = time.time() - began
        cursor.execute("VACUUM ANALYZE tasks_task")
    return {
        "rows_before": existing,
        "rows_inserted": missing,
        "rows": existing + missing,
        "insert_seconds": inserted,
        "insert_rows_per_s": missing / inserted if inserted else None,
        "vacuum_analyze_seconds": time.time() - began - inserted,
    }


def deep_cursor(*, owner_id: int, depth: int) -> str:
    """The cursor DRF's CursorPagination would hand out `depth` rows into the owner's list."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT created_at FROM tasks_task WHERE owner_id = %s "
            "ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
            [owner_id, depth],
        )
        row = cursor.fetchone()
    if row is None:
        return ""
    encoded = base64.b64encode(urlencode({"p": str(row[0])}).encode("ascii")).decode("ascii")
    return quote(encoded)


COUNT = re.compile(r"\bCOUNT\(", re.IGNORECASE)


def count_queries(paths: dict[str, str], *, headers: dict[str, str], admin: Any) -> dict[str, Any]:
    """The COUNT queries each read makes (through Django's test client, same database); a COUNT
    without a WHERE clause is a count over the whole table."""
    found: dict[str, Any] = {}
    for name, path in paths.items():
        client = Client()
        if path.startswith("/admin/"):
            client.force_login(admin)
            extra: dict[str, str] = {}
        else:
            extra = headers
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path, **extra)  # type: ignore[arg-type]
        counts = [q["sql"] for q in captured.captured_queries if COUNT.search(q["sql"])]
        found[name] = {
            "status": response.status_code,
            "queries": len(captured.captured_queries),
            "count_queries": counts,
            "whole_table_count": any(" WHERE " not in sql.upper() for sql in counts),
        }
    return found
