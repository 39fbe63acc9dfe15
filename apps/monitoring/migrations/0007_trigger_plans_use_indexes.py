"""The rollup triggers' statements plan with `enable_seqscan = off` (docs/benchmarks.md, W13).

A trigger function's statements have no parameters, so PostgreSQL plans each once per session and
keeps the plan until the statistics of a table it reads change. Planned while a table's
statistics said it was nearly empty (autovacuum analyses a fresh install's tables at ~50 rows),
the attempt probe of 0006 became a sequential scan of tasks_taskattempt, and stayed one while the
table grew by tens of thousands of rows before the next analyse: ~1 ms a status change at 40,000
attempts. The triggers only ever probe and upsert by key, so every statement in them has an index
to use; the setting holds only while the function runs.
"""

from django.db import migrations

FUNCTIONS = [
    "monitoring_tasks_inserted()",
    "monitoring_tasks_deleted()",
    "monitoring_tasks_updated()",
]
FORWARD = "".join(f"ALTER FUNCTION {name} SET enable_seqscan = off;\n" for name in FUNCTIONS)
REVERSE = "".join(f"ALTER FUNCTION {name} RESET enable_seqscan;\n" for name in FUNCTIONS)


class Migration(migrations.Migration):
    dependencies = [("monitoring", "0006_update_trigger_fixes")]

    operations = [migrations.RunSQL(FORWARD, REVERSE)]
