"""Fewer index writes per status change (docs/benchmarks.md, W8).

Django gives every foreign key its own index. On the attempt and history tables, which the worker
writes twice per task, those on `task` repeat the first column of an index that is there anyway
(`attempt_unique_number (task, number)`, `status_change_task_at (task, at)`), and the one on
`actor` indexed a NULL for every change a worker makes. The state changes are Django's
(`db_index=False`); the database only drops the three indexes and adds a partial one for the rows
that have an actor: the AlterField operations alone would drop and re-add the foreign keys, which
re-checks every row of both tables under lock.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

DROPPED = {
    "tasks_taskattempt_task_id_8de28949": ("tasks_taskattempt", "task_id"),
    "tasks_taskstatuschange_task_id_d1b8e237": ("tasks_taskstatuschange", "task_id"),
    "tasks_taskstatuschange_actor_id_7ac0997e": ("tasks_taskstatuschange", "actor_id"),
}


class Migration(migrations.Migration):
    dependencies = [
        ("tasks", "0005_drop_task_owner_active"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="taskattempt",
                    name="task",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="attempt_rows",
                        to="tasks.task",
                    ),
                ),
                migrations.AlterField(
                    model_name="taskstatuschange",
                    name="actor",
                    field=models.ForeignKey(
                        blank=True,
                        db_index=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                migrations.AlterField(
                    model_name="taskstatuschange",
                    name="task",
                    field=models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="status_changes",
                        to="tasks.task",
                    ),
                ),
            ],
            database_operations=[
                migrations.RunSQL(
                    f'DROP INDEX IF EXISTS "{name}"',
                    f'CREATE INDEX IF NOT EXISTS "{name}" ON "{table}" ("{column}")',
                )
                for name, (table, column) in DROPPED.items()
            ],
        ),
        migrations.AddIndex(
            model_name="taskstatuschange",
            index=models.Index(
                condition=models.Q(("actor__isnull", False)),
                fields=["actor"],
                name="status_change_actor",
            ),
        ),
    ]
