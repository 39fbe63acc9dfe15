"""Triggers on tasks_task that keep the rollups of apps/monitoring/models.py, and the indexes the
monitoring queries read.

Statement-level triggers with transition tables: a statement that moves 500 tasks (the releaser)
costs one grouped upsert per rollup, not 500. Upserts are ordered by key so that two statements
lock rollup rows in the same order.
"""

from django.db import migrations

BOUNDS = (
    "0.001,0.002,0.005,0.01,0.02,0.05,0.1,0.2,0.5,1,2,5,10,20,50,100,200,500,1000,2000,5000,Infinity"
)
SHARD = "(pg_backend_pid() % 8)"
MINUTE = "date_trunc('minute', statement_timestamp())"
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

FUNCTIONS = f"""
CREATE FUNCTION monitoring_array_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN a IS NULL THEN b
        WHEN b IS NULL THEN a
        ELSE ARRAY(
            SELECT coalesce(x, 0) + coalesce(y, 0)
            FROM unnest(a, b) WITH ORDINALITY AS u(x, y, i) ORDER BY i
        )
    END
$$;

CREATE AGGREGATE monitoring_array_sum(bigint[]) (
    SFUNC = monitoring_array_add, STYPE = bigint[], PARALLEL = SAFE
);

-- One observation as a histogram: 1 in the first bucket whose upper bound holds it, 0 elsewhere.
CREATE FUNCTION monitoring_histogram(seconds double precision) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN seconds IS NULL THEN NULL ELSE ARRAY(
        SELECT (CASE WHEN i = (
            SELECT min(j) FROM unnest(bounds) WITH ORDINALITY AS b(le, j) WHERE seconds <= le
        ) THEN 1 ELSE 0 END)::bigint
        FROM generate_series(1, cardinality(bounds)) AS i ORDER BY i
    ) END
    FROM (SELECT '{{{BOUNDS}}}'::double precision[] AS bounds) AS c
$$;

CREATE FUNCTION monitoring_tasks_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO monitoring_taskcount AS m (owner_id, type, status, shard, n)
    SELECT owner_id, type, status, {SHARD}, count(*)
    FROM new_rows GROUP BY owner_id, type, status ORDER BY owner_id, type, status
    ON CONFLICT (owner_id, type, status, shard) DO UPDATE SET n = m.n + EXCLUDED.n;

    INSERT INTO monitoring_taskminutestat AS m (minute, owner_id, type, shard, created)
    SELECT {MINUTE}, owner_id, type, {SHARD}, count(*)
    FROM new_rows GROUP BY owner_id, type ORDER BY owner_id, type
    ON CONFLICT (minute, owner_id, type, shard) DO UPDATE SET created = m.created + EXCLUDED.created;
    RETURN NULL;
END
$$;

CREATE FUNCTION monitoring_tasks_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO monitoring_taskcount AS m (owner_id, type, status, shard, n)
    SELECT owner_id, type, status, {SHARD}, -count(*)
    FROM old_rows GROUP BY owner_id, type, status ORDER BY owner_id, type, status
    ON CONFLICT (owner_id, type, status, shard) DO UPDATE SET n = m.n + EXCLUDED.n;
    RETURN NULL;
END
$$;

-- Status moves: the counts follow, and each move is an event of the minute. Queue wait is the time
-- from the row's last change while queued (its (re)queueing) to its claim; run time is the attempt
-- row's, for attempts that ended (not lost).
CREATE FUNCTION monitoring_tasks_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH moved AS (
        SELECT n.id, n.owner_id, n.type, n.status, n.attempts, n.updated_at,
               o.owner_id AS old_owner_id, o.type AS old_type, o.status AS old_status,
               o.updated_at AS old_updated_at,
               (o.dead_lettered_at IS NULL AND n.dead_lettered_at IS NOT NULL) AS dead_lettered
        FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE (o.status, o.owner_id, o.type) IS DISTINCT FROM (n.status, n.owner_id, n.type)
           OR (o.dead_lettered_at IS NULL AND n.dead_lettered_at IS NOT NULL)
    ),
    counts AS (
        INSERT INTO monitoring_taskcount AS m (owner_id, type, status, shard, n)
        SELECT owner_id, type, status, {SHARD}, sum(d) FROM (
            SELECT old_owner_id AS owner_id, old_type AS type, old_status AS status, -1 AS d
            FROM moved WHERE (old_status, old_owner_id, old_type) <> (status, owner_id, type)
            UNION ALL
            SELECT owner_id, type, status, 1
            FROM moved WHERE (old_status, old_owner_id, old_type) <> (status, owner_id, type)
        ) AS delta
        GROUP BY owner_id, type, status HAVING sum(d) <> 0 ORDER BY owner_id, type, status
        ON CONFLICT (owner_id, type, status, shard) DO UPDATE SET n = m.n + EXCLUDED.n
    ),
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
    SELECT {MINUTE}, owner_id, type, {SHARD},
           count(*) FILTER (WHERE started), count(*) FILTER (WHERE succeeded),
           count(*) FILTER (WHERE failed), count(*) FILTER (WHERE retried),
           count(*) FILTER (WHERE cancelled), count(*) FILTER (WHERE replayed),
           count(*) FILTER (WHERE dead_lettered),
           count(wait), coalesce(sum(wait), 0), monitoring_array_sum(monitoring_histogram(wait)),
           count(run), coalesce(sum(run), 0), monitoring_array_sum(monitoring_histogram(run))
    FROM events GROUP BY owner_id, type ORDER BY owner_id, type
    ON CONFLICT (minute, owner_id, type, shard) DO UPDATE SET {ADD_EVENTS}, {ADD_BUCKETS};
    RETURN NULL;
END
$$;

CREATE TRIGGER monitoring_tasks_inserted AFTER INSERT ON tasks_task
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION monitoring_tasks_inserted();
CREATE TRIGGER monitoring_tasks_updated AFTER UPDATE ON tasks_task
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION monitoring_tasks_updated();
CREATE TRIGGER monitoring_tasks_deleted AFTER DELETE ON tasks_task
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION monitoring_tasks_deleted();

-- Tasks that exist already: counted once, with no other writer (the lock is held to commit).
LOCK TABLE tasks_task IN SHARE MODE;
INSERT INTO monitoring_taskcount (owner_id, type, status, shard, n)
SELECT owner_id, type, status, 0, count(*) FROM tasks_task GROUP BY owner_id, type, status;

-- The latest failures, everyone's and one owner's, without scanning the finished tasks.
CREATE INDEX monitoring_task_failed ON tasks_task (finished_at DESC) WHERE status = 'failed';
CREATE INDEX monitoring_task_owner_failed ON tasks_task (owner_id, finished_at DESC)
    WHERE status = 'failed';
"""

REVERSE = """
DROP INDEX IF EXISTS monitoring_task_owner_failed;
DROP INDEX IF EXISTS monitoring_task_failed;
DROP TRIGGER IF EXISTS monitoring_tasks_deleted ON tasks_task;
DROP TRIGGER IF EXISTS monitoring_tasks_updated ON tasks_task;
DROP TRIGGER IF EXISTS monitoring_tasks_inserted ON tasks_task;
DROP FUNCTION IF EXISTS monitoring_tasks_deleted();
DROP FUNCTION IF EXISTS monitoring_tasks_updated();
DROP FUNCTION IF EXISTS monitoring_tasks_inserted();
DROP FUNCTION IF EXISTS monitoring_histogram(double precision);
DROP AGGREGATE IF EXISTS monitoring_array_sum(bigint[]);
DROP FUNCTION IF EXISTS monitoring_array_add(bigint[], bigint[]);
"""


class Migration(migrations.Migration):
    dependencies = [
        ("monitoring", "0001_rollups"),
        ("tasks", "0001_initial"),
    ]

    operations = [migrations.RunSQL(FUNCTIONS, REVERSE)]
