# The concurrency limit's count of a type's released tasks not yet claimed (queued, still marked
# as waiting for a slot), in every claim of a limited type (apps.handlers.limits.
# concurrency_condition) and every release (apps.tasks.slots): a few rows per type at most (its
# limit). The waiting line's index (tasks.task_waiting_for_slot) holds the postponed tasks too, and
# not their status: counting through it read the whole line, on every claim, under the type's lock.
# Built CONCURRENTLY (the table keeps taking writes), as 0002's.

from django.db import migrations


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("handlers", "0003_backoff_maximum"),
        ("tasks", "0008_waiting_for_slot"),
    ]

    operations = [
        migrations.RunSQL(
            sql="CREATE INDEX CONCURRENTLY IF NOT EXISTS handlers_task_released_type "
            "ON tasks_task (type) WHERE status = 'queued' AND waiting_for_slot_since IS NOT NULL",
            reverse_sql="DROP INDEX CONCURRENTLY IF EXISTS handlers_task_released_type",
        )
    ]
