# A task held by its type's concurrency limit now waits for a free slot (no run_at) instead of
# coming back every second: waiting_for_slot_since marks it, and a partial index holds the
# waiting line (apps.tasks.slots). The column is nullable without a default (no table rewrite);
# the index is built CONCURRENTLY (the table keeps taking writes) and starts empty.

from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("tasks", "0007_task_admin_created")]

    operations = [
        migrations.AddField(
            model_name="task",
            name="waiting_for_slot_since",
            field=models.DateTimeField(blank=True, null=True),
        ),
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(
                condition=models.Q(
                    ("status__in", ["postponed", "queued"]),
                    ("waiting_for_slot_since__isnull", False),
                ),
                fields=["type", "created_at", "id"],
                name="task_waiting_for_slot",
            ),
        ),
    ]
