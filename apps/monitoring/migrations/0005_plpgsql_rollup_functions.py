"""The rollup triggers' helper functions in PL/pgSQL instead of SQL.

A SQL function that cannot be inlined is planned again in every statement that calls it, and the
update trigger calls `monitoring_histogram` and `monitoring_array_add` on every status change: that
planning was half of the trigger's time (0.63 -> 0.30 ms of PostgreSQL time per status change,
measured with EXPLAIN ANALYZE; docs/benchmarks.md). PL/pgSQL keeps its plans for the session. Same
results: arrays of different lengths add as if padded with zeros; a histogram is NULL for NULL
and all zeros for a value no bound holds (NaN)."""

import importlib
import re

from django.db import migrations

BOUNDS = importlib.import_module("apps.monitoring.migrations.0002_rollup_triggers").BOUNDS

FORWARD = f"""
CREATE OR REPLACE FUNCTION monitoring_array_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    _sum bigint[];
BEGIN
    IF a IS NULL THEN RETURN b; END IF;
    IF b IS NULL THEN RETURN a; END IF;
    _sum := array_fill(0::bigint, ARRAY[greatest(cardinality(a), cardinality(b))]);
    FOR i IN 1 .. cardinality(_sum) LOOP
        _sum[i] := coalesce(a[i], 0) + coalesce(b[i], 0);
    END LOOP;
    RETURN _sum;
END
$$;

CREATE OR REPLACE FUNCTION monitoring_histogram(seconds double precision) RETURNS bigint[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    _bounds CONSTANT double precision[] := '{{{BOUNDS}}}';
    _counts bigint[];
BEGIN
    IF seconds IS NULL THEN RETURN NULL; END IF;
    _counts := array_fill(0::bigint, ARRAY[cardinality(_bounds)]);
    FOR i IN 1 .. cardinality(_bounds) LOOP
        IF seconds <= _bounds[i] THEN
            _counts[i] := 1;
            RETURN _counts;
        END IF;
    END LOOP;
    RETURN _counts;
END
$$;
"""


def _sql_versions() -> str:
    """0002's SQL definitions of the two functions, as replacements."""
    functions = importlib.import_module("apps.monitoring.migrations.0002_rollup_triggers").FUNCTIONS
    found = re.findall(
        r"CREATE FUNCTION (?:monitoring_array_add|monitoring_histogram)\(.*?\n\$\$;",
        functions,
        flags=re.DOTALL,
    )
    assert len(found) == 2
    return "\n".join(f.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION") for f in found)


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0004_update_trigger_lock_order")]

    operations = [migrations.RunSQL(FORWARD, _sql_versions())]
