# Indexes on tasks_task for this app's queries, built CONCURRENTLY (the table keeps taking writes):
# - the concurrency limit's count of a type's running tasks, in every claim of a limited type
#   (apps.handlers.limits.concurrency_condition);
# - the admin's last failure of each type (apps.handlers.admin).
# Raw SQL (as apps.monitoring does for its own indexes on tasks_task), so that the tasks app's
# model stays the tasks app's.

from django.db import migrations

FORWARD = [
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS handlers_task_running_type "
    "ON tasks_task (type) WHERE status = 'running'",
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS handlers_task_failed_type "
    "ON tasks_task (type, finished_at DESC) WHERE status = 'failed'",
]
BACKWARD = [
    "DROP INDEX CONCURRENTLY IF EXISTS handlers_task_failed_type",
    "DROP INDEX CONCURRENTLY IF EXISTS handlers_task_running_type",
]


class Migration(migrations.Migration):
    atomic = False

    dependencies = [
        ("handlers", "0001_initial"),
        ("tasks", "0001_initial"),
    ]

    operations = [
        migrations.RunSQL(sql=forward, reverse_sql=backward)
        for forward, backward in zip(FORWARD, reversed(BACKWARD), strict=True)
    ]
