"""Two fixes to the rollup trigger's SQL (docs/benchmarks.md, W9).

1. A crash. Since 0005, `monitoring_histogram` (PL/pgSQL) returned its array variable, which
   PL/pgSQL hands over as a read/write "expanded" array. Aggregated by `monitoring_array_sum`
   (whose transition function is PL/pgSQL too) over two or more rows of one group under GROUPING
   SETS, as the update trigger does when one statement finishes several running tasks (an admin
   action, a bulk update), the same array was freed twice and the PostgreSQL backend aborted
   ("free(): double free detected"), restarting the whole server. Worker transitions move one row
   and never hit it. The histogram is now built by array functions, which return a plain array.
2. The trigger joined the moved rows to tasks_taskattempt for run times. PostgreSQL estimates a
   transition table at 200 rows whatever it holds, so in the cached plan of a worker's session
   that join became a hash join over a sequential scan of the *whole* attempt table, on every
   status change: 8 ms a change at 15,000 attempts against 0.25 ms with a probe, growing with the
   table until an index probe looks cheaper. A LATERAL subquery with LIMIT 1 cannot be flattened
   into a join: one probe of attempt_unique_number per moved row, whatever the estimate.

Same results in both: tests/monitoring/test_rollups.py.
"""

import importlib

from django.db import migrations

BOUNDS = importlib.import_module("apps.monitoring.migrations.0002_rollup_triggers").BOUNDS

HISTOGRAM = f"""
CREATE OR REPLACE FUNCTION monitoring_histogram(seconds double precision) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    _bounds CONSTANT double precision[] := '{{{BOUNDS}}}';
    _n CONSTANT integer := cardinality(_bounds);
BEGIN
    IF seconds IS NULL THEN RETURN NULL; END IF;
    -- Built by expressions, never returned from an array variable (see above).
    FOR i IN 1 .. _n LOOP
        IF seconds <= _bounds[i] THEN
            RETURN array_fill(0::bigint, ARRAY[i - 1]) || 1::bigint
                || array_fill(0::bigint, ARRAY[_n - i]);
        END IF;
    END LOOP;
    RETURN array_fill(0::bigint, ARRAY[_n]);  -- NaN: no bound holds it
END
$$;
"""

JOIN = """
        LEFT JOIN tasks_taskattempt a
            ON mv.old_status = 'running' AND a.task_id = mv.id AND a.number = mv.attempts
"""
PROBE = """
        LEFT JOIN LATERAL (
            SELECT outcome, started_at, finished_at FROM tasks_taskattempt
            WHERE mv.old_status = 'running' AND task_id = mv.id AND number = mv.attempts
            LIMIT 1
        ) AS a ON true
"""

_TRIGGER = importlib.import_module("apps.monitoring.migrations.0004_update_trigger_lock_order")
_FUNCTIONS = importlib.import_module("apps.monitoring.migrations.0005_plpgsql_rollup_functions")
assert _TRIGGER.FORWARD.count(JOIN) == 1
FORWARD = HISTOGRAM + _TRIGGER.FORWARD.replace(JOIN, PROBE, 1)
REVERSE = _FUNCTIONS.FORWARD + _TRIGGER.FORWARD


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0005_plpgsql_rollup_functions")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
