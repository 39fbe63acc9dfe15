# The active-task cap reads the per-owner rollup (monitoring_taskcount) since 9bfa82e; nothing reads
# this index any more, and every create and every move between active states wrote to it.

from django.contrib.postgres.operations import RemoveIndexConcurrently
from django.db import migrations


class Migration(migrations.Migration):
    atomic = False

    dependencies = [("tasks", "0004_list_status_index_without_succeeded")]

    operations = [RemoveIndexConcurrently(model_name="task", name="task_owner_active")]
