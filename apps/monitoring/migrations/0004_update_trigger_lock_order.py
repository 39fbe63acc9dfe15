"""The update trigger locks rollup rows in the same order as the insert trigger: counts first, then
the minute. (In 0003 the counts were a data-modifying CTE, which PostgreSQL runs after the main
INSERT of the minute: a task created and another claimed at the same moment, on the same shard,
could each hold the row the other wanted, a deadlock.)"""

import importlib

from django.db import migrations

EVENT_COLUMNS = (
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
ADD_EVENTS = ", ".join(f"{c} = m.{c} + EXCLUDED.{c}" for c in EVENT_COLUMNS)
ADD_BUCKETS = (
    "wait_buckets = monitoring_array_add(m.wait_buckets, EXCLUDED.wait_buckets), "
    "run_buckets = monitoring_array_add(m.run_buckets, EXCLUDED.run_buckets)"
)
MOVED = """
    moved AS (
        SELECT n.id, n.owner_id, n.type, n.status, n.attempts, n.updated_at,
               o.owner_id AS old_owner_id, o.type AS old_type, o.status AS old_status,
               o.updated_at AS old_updated_at,
               (o.dead_lettered_at IS NULL AND n.dead_lettered_at IS NOT NULL) AS dead_lettered
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.status, o.owner_id, o.type) IS DISTINCT FROM (n.status, n.owner_id, n.type)
           OR (o.dead_lettered_at IS NULL AND n.dead_lettered_at IS NOT NULL)
    )"""

FORWARD = f"""
CREATE OR REPLACE FUNCTION monitoring_tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    _shard smallint := floor(random() * 16);
BEGIN
    -- 1. The counts (as the insert and delete triggers do first).
    WITH {MOVED}
    INSERT INTO monitoring_taskcount AS m (owner_id, type, status, shard, n)
    SELECT coalesce(owner_id, 0), type, status, _shard, sum(d) FROM (
        SELECT old_owner_id AS owner_id, old_type AS type, old_status AS status, -1 AS d
        FROM moved WHERE (old_status, old_owner_id, old_type) <> (status, owner_id, type)
        UNION ALL
        SELECT owner_id, type, status, 1
        FROM moved WHERE (old_status, old_owner_id, old_type) <> (status, owner_id, type)
    ) AS delta
    GROUP BY GROUPING SETS ((owner_id, type, status), (type, status))
    HAVING sum(d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (owner_id, type, status, shard) DO UPDATE SET n = m.n + EXCLUDED.n;

    -- 2. The minute's events and timings.
    WITH {MOVED},
    events AS (
        SELECT mv.owner_id, mv.type,
               mv.status <> mv.old_status AND mv.status = 'running' AS started,
               mv.status <> mv.old_status AND mv.status = 'succeeded' AS succeeded,
               mv.status <> mv.old_status AND mv.status = 'failed' AS failed,
               mv.status <> mv.old_status AND mv.status = 'retrying' AS retried,
               mv.status <> mv.old_status AND mv.status = 'cancelled' AS cancelled,
               mv.status = 'queued' AND mv.old_status IN ('failed', 'cancelled') AS replayed,
               mv.dead_lettered,
               CASE WHEN mv.status = 'running' AND mv.old_status = 'queued'
                    THEN greatest(0, extract(epoch FROM mv.updated_at - mv.old_updated_at))
               END::double precision AS wait,
               CASE WHEN mv.old_status = 'running' AND mv.status <> 'running'
                         AND a.outcome IN ('succeeded', 'failed', 'cancelled')
                    THEN greatest(0, extract(epoch FROM
                        coalesce(a.finished_at, statement_timestamp()) - a.started_at))
               END::double precision AS run
        FROM moved mv
        LEFT JOIN tasks_taskattempt a
            ON mv.old_status = 'running' AND a.task_id = mv.id AND a.number = mv.attempts
    )
    INSERT INTO monitoring_taskminutestat AS m (
        minute, owner_id, type, shard, started, succeeded, failed, retried, cancelled, replayed,
        dead_lettered, wait_count, wait_sum, wait_buckets, run_count, run_sum, run_buckets
    )
    SELECT date_trunc('minute', statement_timestamp()), coalesce(owner_id, 0), type, _shard,
           count(*) FILTER (WHERE started), count(*) FILTER (WHERE succeeded),
           count(*) FILTER (WHERE failed), count(*) FILTER (WHERE retried),
           count(*) FILTER (WHERE cancelled), count(*) FILTER (WHERE replayed),
           count(*) FILTER (WHERE dead_lettered),
           count(wait), coalesce(sum(wait), 0), monitoring_array_sum(monitoring_histogram(wait)),
           count(run), coalesce(sum(run), 0), monitoring_array_sum(monitoring_histogram(run))
    FROM events GROUP BY GROUPING SETS ((owner_id, type), (type)) ORDER BY 2, 3
    ON CONFLICT (minute, owner_id, type, shard) DO UPDATE SET {ADD_EVENTS}, {ADD_BUCKETS};
    RETURN NULL;
END
$$;
"""

# Back to 0003's functions.
REVERSE = importlib.import_module("apps.monitoring.migrations.0003_all_owners_rows").functions(
    all_owners=True
)


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0003_all_owners_rows")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
