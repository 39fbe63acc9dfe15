"""The concurrency limit's waiting line: tasks held because their type had no free slot.

A claim of a type with a concurrency limit moves the task to `running` only if fewer than the
limit run (apps.handlers.limits, in the claim). A claim that loses holds the task here: it goes
`queued -> postponed` with no run_at and `waiting_for_slot_since` set, and waits, costing
nothing, until a slot frees. Then it is released, oldest first, by

- the worker whose task of the type just ended (at once), and
- beat's releaser, every tick, for every type with waiting tasks (the safety net: a slot freed by
  a lost worker, the reaper, a raised limit, a limit removed, a type deleted).

A released task keeps its mark while it is queued and counts as taking a slot until its claim
clears the mark, so that a slot is handed to one waiting task, not to all of them. Everything
that changes the line takes the type's advisory lock, the same one every claim of the type
takes, so a release counts the running tasks as the claims leave them.

Before this, a held task came back every second to try its claim again: two history rows and a
message a second per waiting task for as long as the slot stayed taken.
"""

import logging
from datetime import datetime

from django.db import connection, transaction
from django.utils import timezone

from apps.handlers import limits
from apps.handlers.registry import TaskTypeSpec, get_task_type
from apps.tasks import publisher
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import Rows, Sql, transition, transition_one

logger = logging.getLogger(__name__)

S = TaskStatus
TASK_TABLE = Task._meta.db_table
# Without a limit (removed, or the type is gone) the waiting tasks go in batches of this size.
RELEASE_BATCH = 1000

_WAITING = (
    f"SELECT id FROM {TASK_TABLE} "  # noqa: S608 (a table name, not input)
    "WHERE type = %s AND status = 'postponed' AND waiting_for_slot_since IS NOT NULL "
    "AND run_at IS NULL ORDER BY created_at, id LIMIT %s"
)
_TAKEN = (
    f"SELECT (SELECT count(*) FROM {TASK_TABLE} "  # noqa: S608 (a table name, not input)
    "WHERE type = %s AND status = 'running'), "
    f"(SELECT count(*) FROM {TASK_TABLE} "
    "WHERE type = %s AND status = 'queued' AND waiting_for_slot_since IS NOT NULL)"
)
_WAITING_TYPES = (
    f"SELECT DISTINCT type FROM {TASK_TABLE} "  # noqa: S608 (a table name, not input)
    "WHERE status = 'postponed' AND waiting_for_slot_since IS NOT NULL AND run_at IS NULL"
)


def hold_for_slot(*, task_id: str, dispatch_id: str, spec: TaskTypeSpec) -> bool:
    """queued -> postponed to wait for a slot, after the task's claim lost to the limit. False if
    the task changed meanwhile (cancelled, or its dispatch replaced).

    Under the type's lock, and the free slots are counted again in the same transaction: a task
    of the type that ended between the lost claim and this hold has already made its release,
    which did not see this task yet; so this one releases in its place (maybe this very task)."""
    with transaction.atomic():
        limits.lock_type_for_claim(spec.name)
        if not hold_unclaimed(
            task_id=task_id,
            dispatch_id=dispatch_id,
            run_at=None,
            note=f"held: concurrency limit ({spec.concurrency_limit} running); "
            "waits for a free slot",
            waiting_for_slot=True,
        ):
            return False
        _release_free_slots(spec.name, spec.concurrency_limit)
    return True


def hold_unclaimed(
    *, task_id: str, dispatch_id: str, run_at: datetime | None, note: str, waiting_for_slot: bool
) -> bool:
    """queued -> postponed without a claim (no attempt, no retry used), if the task still has
    this dispatch: until `run_at` (None: until a slot frees, or its type is enabled again). The
    mark puts it in its type's line for a slot, or takes it out (held for another reason)."""
    moved = transition_one(
        task_id=task_id,
        to=S.POSTPONED,
        allowed_from={S.QUEUED},
        where="AND t.dispatch_id = %s",
        where_params=(dispatch_id,),
        changes={
            "run_at": run_at,
            "dispatch_id": None,
            "published_at": None,
            "waiting_for_slot_since": timezone.now() if waiting_for_slot else None,
        },
        note=note,
    )
    return moved is not None


def release_waiting(*, type_name: str, spec: TaskTypeSpec | None = None) -> int:
    """Release as many of the type's waiting tasks, oldest first, as it has free slots (all of
    them, in batches, if it no longer has a limit). Returns how many were released."""
    if spec is None:
        spec = get_task_type(type_name)
    limit = spec.concurrency_limit if spec is not None else None
    with transaction.atomic():
        limits.lock_type_for_claim(type_name)
        return _release_free_slots(type_name, limit)


def release_waiting_everywhere() -> int:
    """beat's sweep: release what can be released, for every type with waiting tasks."""
    with connection.cursor() as cursor:
        cursor.execute(_WAITING_TYPES)
        names = [name for (name,) in cursor.fetchall()]
    released = 0
    for name in names:
        released += release_waiting(type_name=name)
    return released


def _release_free_slots(type_name: str, limit: int | None) -> int:
    """In the caller's transaction, which holds the type's lock."""
    if limit is None:
        free = RELEASE_BATCH
    else:
        with connection.cursor() as cursor:
            cursor.execute(_TAKEN, [type_name, type_name])
            running, released_not_claimed = cursor.fetchone()
        free = min(limit - running - released_not_claimed, RELEASE_BATCH)
    if free <= 0:
        return 0
    with connection.cursor() as cursor:
        cursor.execute(_WAITING, [type_name, free])
        ids = [str(task_id) for (task_id,) in cursor.fetchall()]
    if not ids:
        return 0
    moved = transition(
        to=S.QUEUED,
        allowed_from={S.POSTPONED},
        task_rows=Rows(ids=ids, values={}),
        where="AND t.waiting_for_slot_since IS NOT NULL AND t.run_at IS NULL",
        changes={"dispatch_id": Sql("gen_random_uuid()"), "published_at": None},
        note="released: a slot is free",
    )
    publisher.publish_on_commit([publisher.dispatch_for(m.task) for m in moved])
    if moved:
        logger.info("Released %d task(s) of %s waiting for a free slot", len(moved), type_name)
    return len(moved)
