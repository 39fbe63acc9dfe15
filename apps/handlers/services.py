"""Task type writes: the code registry synced into the table, staff's changes, held tasks freed."""

import logging

from django.db import connection, transaction
from django.utils import timezone

from apps.handlers.models import TaskType, TaskTypeKind
from apps.handlers.registry import code_task_types
from apps.handlers.selectors import invalidate_task_types

logger = logging.getLogger(__name__)


def task_types_sync() -> list[str]:
    """Give every code type a row (empty overrides: the code's defaults). Idempotent; never
    changes an existing row, so staff's edits stay. Returns the names of the rows created."""
    code = code_task_types()
    existing = set(TaskType.objects.filter(name__in=list(code)).values_list("name", flat=True))
    missing = sorted(set(code) - existing)
    if missing:
        TaskType.objects.bulk_create(
            [TaskType(name=name, kind=TaskTypeKind.CODE) for name in missing],
            ignore_conflicts=True,  # another process synced at the same moment
        )
        invalidate_task_types()
        logger.info("Task types added to the table: %s", ", ".join(missing))
    return missing


def task_types_sync_if_ready() -> list[str]:
    """task_types_sync, if the table exists (post_migrate also runs for partial migrations)."""
    if TaskType._meta.db_table not in connection.introspection.table_names():
        return []
    return task_types_sync()


@transaction.atomic
def task_type_save(*, task_type: TaskType) -> TaskType:
    """Save staff's change. A type enabled again frees its held tasks (they run within the
    releaser's next tick)."""
    task_type.save()
    if task_type.enabled:
        task_type_release_held(name=task_type.name)
    invalidate_task_types()
    return task_type


@transaction.atomic
def task_type_delete(*, task_type: TaskType) -> None:
    """Delete a webhook type. Its tasks held while it was disabled are made due, so that they do
    not wait for ever: released, they fail as of an unknown type (a clear end, and retryable by
    hand should the type come back)."""
    task_type_release_held(name=task_type.name)
    task_type.delete()
    invalidate_task_types()


def task_type_set_enabled(*, task_type: TaskType, enabled: bool) -> TaskType:
    task_type.enabled = enabled
    return task_type_save(task_type=task_type)


def task_type_release_held(*, name: str) -> int:
    """Make the tasks held for a disabled type due now. Held tasks are the only `postponed` ones
    without a run_at (apps.tasks.execution holds them so) besides those waiting for a slot of the
    concurrency limit; the releaser queues them. A data
    change, not a status change, so not through transitions.transition: the release is."""
    from apps.tasks.models import Task
    from apps.tasks.states import TaskStatus

    return Task.objects.filter(
        type=name,
        status=TaskStatus.POSTPONED,
        run_at__isnull=True,
        waiting_for_slot_since__isnull=True,  # those wait for a slot (apps.tasks.slots)
    ).update(run_at=timezone.now())


def type_disabled_for_hold(name: str) -> bool:
    """True if the type's row says disabled, with the row share-locked until the transaction ends.

    The worker holding a task for a disabled type calls this in the hold's transaction: staff
    enabling the type at that moment either commits first (then this says enabled, and the task
    runs) or waits for the hold to commit (then its release of held tasks sees this one)."""
    table = TaskType._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT enabled FROM {table} WHERE name = %s FOR SHARE",  # noqa: S608 (table name)
            [name],
        )
        row = cursor.fetchone()
    return row is not None and not row[0]
