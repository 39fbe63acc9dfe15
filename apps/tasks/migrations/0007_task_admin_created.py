# task_created (created_at DESC, id DESC, all owners) replaced by the same order with NULLS LAST,
# which only the admin's changelist asks for: an owner's list (ORDER BY created_at DESC, NULLS
# FIRST) can no longer walk an all-owners index and throw away other owners' rows (apps/tasks/
# models.py says more). CONCURRENTLY, the new one first: the table keeps taking writes, and the
# admin's list never loses its index half-way.

from django.contrib.postgres.operations import AddIndexConcurrently, RemoveIndexConcurrently
from django.db import migrations, models


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("tasks", "0006_drop_redundant_fk_indexes")]

    operations = [
        AddIndexConcurrently(
            model_name="task",
            index=models.Index(
                models.OrderBy(models.F("created_at"), descending=True, nulls_last=True),
                models.OrderBy(models.F("id"), descending=True, nulls_last=True),
                name="task_admin_created",
            ),
        ),
        RemoveIndexConcurrently(model_name="task", name="task_created"),
    ]
