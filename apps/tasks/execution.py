"""What a worker does with an execution message: claim the task, run its handler, record the end.

A message carries (task_id, dispatch_id), or, for a type that runs in batches, several such pairs
(`handle_batch`: one claim and one finish statement for them all). Only the message whose
dispatch_id the row holds may run the task, and only while the row is `queued`; so duplicates,
stale messages and messages for cancelled or finished tasks do nothing. RabbitMQ hands one message
to one consumer at a time, and a message sent again always carries a new dispatch_id
(`transitions.redispatch`), so a *redelivered* message whose task is still `running` on its
dispatch means the worker that had it is gone: that attempt is lost, and counts as a failed
attempt. A message that kills its worker every time thus uses up the task's retries and ends in
the dead-letter queue.
"""

import json
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone
from psycopg.pq import TransactionStatus

from apps.core.logging import bind_log_context
from apps.core.text import are_uuids
from apps.handlers import limits
from apps.handlers.context import TaskContext
from apps.handlers.errors import PermanentError, RetryableError, TaskCancelled
from apps.handlers.registry import TaskTypeSpec, get_task_type
from apps.handlers.selectors import invalidate_task_types
from apps.handlers.services import type_disabled_for_hold
from apps.tasks import slots
from apps.tasks.backoff import retry_wait
from apps.tasks.models import AttemptOutcome, Task
from apps.tasks.publisher import DeadLetter, batch_task_time_limit, publish_dead_letters
from apps.tasks.soft_limit import soft_time_limit
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import (
    AttemptFinish,
    AttemptStart,
    Rows,
    Sql,
    Transitioned,
    transition,
    transition_one,
    transition_one_moved,
)

logger = logging.getLogger(__name__)
S = TaskStatus

LEASE_GRACE_SECONDS = 60

# A batch records the successes it holds before its next task once this long has passed since
# it last recorded (or claimed): a hard kill then loses little succeeded work. Short handlers
# (`echo`: a batch of 16 in milliseconds) never reach it: one finish statement per batch.
RECORD_SUCCEEDED_AFTER_SECONDS = 1.0


@dataclass(frozen=True)
class DeliveryOutcome:
    action: str  # ran | held | dropped | lost | dead_letter
    status: str | None = None
    note: str = ""

    @property
    def dead_letter(self) -> bool:
        return self.status == S.FAILED and self.action in {"ran", "lost", "dead_letter"}


@dataclass(frozen=True)
class FailureOutcome:
    status: str
    dispatch_id: uuid.UUID | None


@dataclass(frozen=True)
class Succeeded:
    """A handler's result as the JSON text to store (checked), not yet recorded."""

    text: str

    @property
    def result(self) -> object:
        return json.loads(self.text)


def _lease_seconds(
    spec: TaskTypeSpec | None, *, tasks: int = 1, time_limit: float | None = None
) -> int:
    """How long a claimed attempt may run before the reaper takes it for lost.

    `time_limit` is the hard limit the worker enforces on the message (the one the message
    carries, else the worker's default): the lease must outlast it, whatever the type's limit
    is now. Staff may have lowered the type's limit since the message was published, and a lease
    from the new limit would let the reaper take a live attempt for lost and run a retry beside
    it. Without it (a direct call), the type's limit, as the publisher would set it."""
    if time_limit:
        return int(time_limit) + LEASE_GRACE_SECONDS  # a batch's limit covers all its tasks
    # A batch's tasks are all claimed at its start and run one after another.
    limit = (spec.time_limit_seconds if spec else None) or settings.CELERY_TASK_TIME_LIMIT
    return int(limit) * tasks + LEASE_GRACE_SECONDS


def handle_delivery(
    *,
    task_id: str,
    dispatch_id: str,
    redelivered: bool,
    worker: str,
    task_type: str = "",
    time_limit: float | None = None,
    handler_time_limit: float | None = None,
) -> DeliveryOutcome:
    """`time_limit`: the hard time limit the worker enforces on the message (the lease's).
    `handler_time_limit`: a soft limit of the handler's own (a task of a batched message)."""
    spec = get_task_type(task_type) if task_type else None
    if spec is not None and spec.enabled and not spec.rate_limit:
        # The common case: the message names an enabled type without a rate limit, so nothing
        # needs the row before the claim (which checks the type too).
        claimed = _claim(
            task_id=task_id,
            dispatch_id=dispatch_id,
            spec=spec,
            worker=worker,
            task_type=task_type,
            time_limit=time_limit,
        )
    else:
        # An older message without its type, or a type that may hold the task: read the row.
        task = Task.objects.filter(id=task_id).only("id", "type", "status", "dispatch_id").first()
        if task is None:
            return DeliveryOutcome("dropped", note="no such task (deleted)")
        spec = get_task_type(task.type)
        if spec is not None and task.status == S.QUEUED and str(task.dispatch_id) == dispatch_id:
            # The type's switches and limits, before the claim (a held task is not claimed).
            held, spec = _admit(task_id=task_id, dispatch_id=dispatch_id, spec=spec)
            if held is not None:
                return held
        claimed = _claim(
            task_id=task_id,
            dispatch_id=dispatch_id,
            spec=spec,
            worker=worker,
            time_limit=time_limit,
        )
    if claimed is not None:
        status = run_claimed(claimed.task, spec, handler_time_limit=handler_time_limit)
        if spec is not None and spec.concurrency_limit:
            # Its slot is free: hand it to the type's longest-waiting task, now rather than at
            # the releaser's next tick.
            _hand_slot_on(spec)
        return DeliveryOutcome("ran", status=status)
    return _not_claimed(
        task_id=task_id, dispatch_id=dispatch_id, spec=spec, redelivered=redelivered
    )


def _hand_slot_on(spec: TaskTypeSpec) -> None:
    """Release the type's waiting tasks its free slots allow. Best effort: the task's own outcome
    is recorded already, and beat's releaser does the same within a tick if this fails."""
    try:
        slots.release_waiting(type_name=spec.name, spec=spec)
    except Exception:
        logger.warning("Could not hand a free slot of %s on", spec.name, exc_info=True)


def _not_claimed(
    *, task_id: str, dispatch_id: str, spec: TaskTypeSpec | None, redelivered: bool
) -> DeliveryOutcome:
    """What the message's claim not taking the task means: why, from the row as it is now."""
    current = Task.objects.filter(id=task_id).values("status", "dispatch_id", "attempts").first()
    if current is None:
        return DeliveryOutcome("dropped", note="no such task (deleted)")
    if str(current["dispatch_id"]) != dispatch_id:
        return DeliveryOutcome("dropped", status=current["status"], note="stale message")
    if current["status"] == S.QUEUED and spec is not None and spec.concurrency_limit:
        # Still queued with this very dispatch: the claim lost to the concurrency limit.
        if slots.hold_for_slot(task_id=task_id, dispatch_id=dispatch_id, spec=spec):
            logger.info("Task %s held: waits for a free slot of %s", task_id, spec.name)
            return DeliveryOutcome("held", status=S.POSTPONED, note="waits for a free slot")
        return DeliveryOutcome("dropped", note="changed while it was being claimed")
    if current["status"] == S.RUNNING and redelivered:
        lost = attempt_lost(
            task_id=task_id,
            attempt=current["attempts"],
            reason="worker lost: the attempt's message came back unacknowledged",
        )
        if lost is None:
            return DeliveryOutcome("dropped", note="attempt already settled")
        if spec is not None and spec.concurrency_limit:
            _hand_slot_on(spec)  # its slot is free
        return DeliveryOutcome("lost", status=lost.status)
    if current["status"] == S.FAILED:
        # Failed with this very message, but it never reached the dead-letter queue.
        return DeliveryOutcome("dead_letter", status=S.FAILED)
    return DeliveryOutcome("dropped", status=current["status"], note="duplicate message")


class DeadLettersNotPublished(Exception):
    """The broker did not take the dead-letter records of a batch's failed tasks."""


def handle_batch(
    *,
    task_type: str,
    pairs: Sequence[tuple[str, str]],
    redelivered: bool,
    worker: str,
    queue: str = "",
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
) -> list[tuple[str, str, DeliveryOutcome]]:
    """A batched message's (task_id, dispatch_id) pairs: claim them in one statement, run their
    handlers one after another, and record their successes in one statement (any other ending
    is recorded as the task's own, when it happens). Returns (task_id, dispatch_id, outcome)s.

    Each handler has a soft time limit of its own: the type's limit the message was published
    with (from the message's `soft_time_limit`, which is that times its tasks plus a margin),
    else the type's limit now. The message's limits stay as the last resort. Successes are
    recorded before the next task once the batch has run RECORD_SUCCEEDED_AFTER_SECONDS since
    it last recorded them (a task that hit its limit always has), and when the batch is left by
    an exception, so that a hard kill or a redelivery does not run them again.

    A redelivered batch, or one whose type may now hold its tasks (disabled, or given a rate or
    concurrency limit since it was published), goes task by task through `handle_delivery`,
    which settles the attempts a lost worker left running.

    A task that failed for good cannot have the message rejected into the dead-letter exchange
    (it carries others): a record of its own goes there (DeadLettersNotPublished if the broker
    does not confirm it; the message, handed back, then finds the task failed and tries again).
    """
    outcomes = _run_batch(
        task_type=task_type,
        pairs=pairs,
        redelivered=redelivered,
        worker=worker,
        time_limit=time_limit,
        handler_time_limit=batch_task_time_limit(soft_time_limit, tasks=len(pairs)),
    )
    reason = f"failed in a batched message from queue {queue or '?'}"
    dead = [
        DeadLetter(task_id, dispatch_id, reason)
        for task_id, dispatch_id, outcome in outcomes
        if outcome.dead_letter
    ]
    try:
        publish_dead_letters(dead)
    except Exception as exc:
        raise DeadLettersNotPublished(
            f"{len(dead)} dead-letter record(s) not published: {exc!r}"
        ) from exc
    return outcomes


def _run_batch(
    *,
    task_type: str,
    pairs: Sequence[tuple[str, str]],
    redelivered: bool,
    worker: str,
    time_limit: float | None = None,
    handler_time_limit: float | None = None,
) -> list[tuple[str, str, DeliveryOutcome]]:
    wellformed: dict[str, str] = {}
    dropped: list[tuple[str, str, DeliveryOutcome]] = []
    for task_id, dispatch_id in pairs:
        if are_uuids(task_id, dispatch_id):
            wellformed.setdefault(task_id, dispatch_id)  # a task once, with its first dispatch
        else:
            dropped.append((task_id, dispatch_id, DeliveryOutcome("dropped", note="malformed ids")))
    return dropped + _run_pairs(
        task_type=task_type,
        pairs=list(wellformed.items()),
        redelivered=redelivered,
        worker=worker,
        time_limit=time_limit,
        handler_time_limit=handler_time_limit,
    )


def _run_pairs(
    *,
    task_type: str,
    pairs: list[tuple[str, str]],
    redelivered: bool,
    worker: str,
    time_limit: float | None = None,
    handler_time_limit: float | None = None,
) -> list[tuple[str, str, DeliveryOutcome]]:
    if not pairs:
        return []
    spec = get_task_type(task_type)
    # Each task's handler has the type's limit of its own, as it would in a message of its own
    # (the one published with; the type's now if the message does not say). The message's
    # limits (the type's times its tasks, plus margins) stay as the last resort.
    if not handler_time_limit and spec is not None:
        handler_time_limit = spec.time_limit_seconds
    if redelivered or spec is None or spec.message_batch_size < 2:
        return [
            (
                task_id,
                dispatch_id,
                handle_delivery(
                    task_id=task_id,
                    dispatch_id=dispatch_id,
                    task_type=task_type,
                    redelivered=redelivered,
                    worker=worker,
                    time_limit=time_limit,
                    handler_time_limit=handler_time_limit,
                ),
            )
            for task_id, dispatch_id in pairs
        ]

    claimed = {
        str(moved.task.id): moved.task
        for moved in transition(
            task_rows=Rows(
                ids=[task_id for task_id, _ in pairs],
                values={"dispatch_id": ("uuid[]", [dispatch_id for _, dispatch_id in pairs])},
            ),
            to=S.RUNNING,
            allowed_from={S.QUEUED},
            where="AND t.dispatch_id = r.dispatch_id AND t.type = %s",
            where_params=(task_type,),
            changes=_claim_changes(spec, tasks=len(pairs), time_limit=time_limit),
            attempt=AttemptStart(worker=worker),
            note=f"claimed by {worker}",
            columns=CLAIMED_COLUMNS,
            wait_for_disk=False,  # as a single claim (docs/reliability.md)
        )
    }
    outcomes: list[tuple[str, str, DeliveryOutcome]] = []
    succeeded: list[tuple[Task, Succeeded]] = []  # not recorded yet

    def record_succeeded() -> None:
        finished = _finish_succeeded(succeeded)
        for task, _ in succeeded:
            task_id = str(task.id)
            status = S.SUCCEEDED if task_id in finished else _settled_elsewhere(task)
            outcomes.append((task_id, str(task.dispatch_id), DeliveryOutcome("ran", status=status)))
        succeeded.clear()

    # The successes are recorded together at the end, unless the batch has taken a while since
    # it last recorded them: then before its next task, which might run until the message's
    # hard limit kills the process (and with it every unrecorded success). A task that hit its
    # own limit took at least that long, so the ones before it are recorded before the next.
    record_after = min(RECORD_SUCCEEDED_AFTER_SECONDS, handler_time_limit or math.inf)
    recorded_at = time.monotonic()
    try:
        for task_id, dispatch_id in pairs:
            task = claimed.get(task_id)
            if task is None:
                outcome = _not_claimed(
                    task_id=task_id, dispatch_id=dispatch_id, spec=spec, redelivered=False
                )
                outcomes.append((task_id, dispatch_id, outcome))
                continue
            if succeeded and time.monotonic() - recorded_at >= record_after:
                record_succeeded()
                recorded_at = time.monotonic()
            ran = _run_handler(task, spec, handler_time_limit=handler_time_limit)
            if isinstance(ran, Succeeded):
                succeeded.append((task, ran))
            else:
                outcomes.append((task_id, dispatch_id, DeliveryOutcome("ran", status=ran)))
    except BaseException:
        # Leaving the batch half done (the database, the message's own soft limit outside a
        # handler, a shutdown): what succeeded is recorded if it can be, so that the message's
        # redelivery does not count those tasks lost and run them again.
        if succeeded:
            try:
                record_succeeded()
            except Exception:
                logger.warning(
                    "A batch of %s left early could not record its %d success(es)",
                    task_type,
                    len(succeeded),
                    exc_info=True,
                )
        raise
    record_succeeded()
    return outcomes


def _finish_succeeded(succeeded: list[tuple[Task, Succeeded]]) -> set[str]:
    """running -> succeeded for each task of the attempt it ran, in one statement; the ids moved."""
    if not succeeded:
        return set()
    moved = transition(
        task_rows=Rows(
            ids=[str(task.id) for task, _ in succeeded],
            values={
                "attempts": ("int[]", [task.attempts for task, _ in succeeded]),
                "result": ("text[]", [ran.text for _, ran in succeeded]),
            },
        ),
        to=S.SUCCEEDED,
        allowed_from={S.RUNNING},
        where="AND t.attempts = r.attempts",  # as _this_attempt, per row
        changes={
            "finished_at": Sql("statement_timestamp()"),
            "lease_expires_at": None,
            "error": "",
            "result": Sql("r.result::jsonb"),
            "progress": 100,
        },
        attempt=AttemptFinish(outcome=AttemptOutcome.SUCCEEDED),
        note=Sql(f"'attempt ' || attempts || ': {AttemptOutcome.SUCCEEDED}'"),
        columns=("id",),
    )
    return {str(each.task.id) for each in moved}


def _settled_elsewhere(task: Task) -> str:
    logger.warning("Attempt %s of task %s was settled elsewhere", task.attempts, task.id)
    return Task.objects.filter(id=task.id).values_list("status", flat=True).first() or ""


# What running a claimed task reads of it (handle_delivery, run_claimed, _finish and the
# failure paths); any other field of the claimed Task is loaded from the row on first access.
CLAIMED_COLUMNS = ("id", "type", "status", "payload", "attempts", "dispatch_id", "owner_id")


def _claim(
    *,
    task_id: str,
    dispatch_id: str,
    spec: TaskTypeSpec | None,
    worker: str,
    task_type: str = "",
    time_limit: float | None = None,
) -> Transitioned | None:
    """queued -> running, if the message's dispatch is the row's (and its type, when the message
    names one; and, for a type with a concurrency limit, if fewer than the limit are running:
    apps.handlers.limits)."""
    limit_where, limit_params = limits.concurrency_condition(spec) if spec else ("", ())
    type_where, type_params = ("AND t.type = %s", (task_type,)) if task_type else ("", ())

    def claim() -> Transitioned | None:
        return transition_one(
            task_id=task_id,
            to=S.RUNNING,
            allowed_from={S.QUEUED},
            where=f"AND t.dispatch_id = %s {type_where} {limit_where}",
            where_params=(dispatch_id, *type_params, *limit_params),
            changes=_claim_changes(spec, time_limit=time_limit),
            attempt=AttemptStart(worker=worker),
            note=f"claimed by {worker}",
            columns=CLAIMED_COLUMNS,
            # A claim lost in a PostgreSQL crash leaves the task queued and its message
            # unacknowledged: it is delivered again (docs/reliability.md). The finish waits.
            wait_for_disk=False,
        )

    if not limit_where:
        return claim()
    assert spec is not None
    with transaction.atomic():
        limits.lock_type_for_claim(spec.name)
        return claim()


def _claim_changes(
    spec: TaskTypeSpec | None, *, tasks: int = 1, time_limit: float | None = None
) -> dict[str, object]:
    lease = timedelta(seconds=_lease_seconds(spec, tasks=tasks, time_limit=time_limit))
    return {
        "attempts": Sql("t.attempts + 1"),
        "started_at": Sql("COALESCE(t.started_at, statement_timestamp())"),
        "lease_expires_at": timezone.now() + lease,
        "progress": 0,
        "progress_message": "",
        "waiting_for_slot_since": None,  # no longer waits, nor takes a slot as released
    }


def _admit(
    *, task_id: str, dispatch_id: str, spec: TaskTypeSpec
) -> tuple[DeliveryOutcome | None, TaskTypeSpec | None]:
    """Hold the task if its type is disabled or over its rate limit: (outcome, None). Otherwise
    (None, the spec to run with). Holding uses no retry and is no failure."""
    if not spec.enabled:
        with transaction.atomic():
            if type_disabled_for_hold(spec.name):
                # No run_at: it waits until staff enable the type (apps.handlers.services).
                held = _hold(
                    task_id=task_id, dispatch_id=dispatch_id, run_at=None, reason="type disabled"
                )
                if held is not None:
                    return held, None
        # Enabled since this process cached the type: look again, with the current settings.
        invalidate_task_types()
        fresh = get_task_type(spec.name)
        if fresh is None:
            return None, None
        spec = fresh
    if (
        spec.rate_limit is not None
        and spec.concurrency_limit
        and not limits.concurrency_admits(task_id, spec)
        and slots.hold_for_slot(task_id=task_id, dispatch_id=dispatch_id, spec=spec)
    ):
        # No slot for it (the limit reached, or older tasks wait in the line): it waits without
        # booking a start of the rate limit, which it would not use. Booked, the start would
        # hold the waiting task its hold releases, with the slot free and nothing started.
        return DeliveryOutcome("held", status=S.POSTPONED, note="waits for a free slot"), None
    wait = limits.rate_limit_wait(spec)
    if wait is not None:
        hold = limits.rate_hold_seconds(spec, wait)
        held = _hold(
            task_id=task_id,
            dispatch_id=dispatch_id,
            run_at=timezone.now() + timedelta(seconds=hold),
            reason=f"rate limit ({spec.rate_limit})",
        )
        if held is not None:
            return held, None
    return None, spec


def _hold(
    *, task_id: str, dispatch_id: str, run_at: datetime | None, reason: str
) -> DeliveryOutcome | None:
    """queued -> postponed until `run_at` (None: until its type is enabled), without a claim:
    no attempt, no retry used. The releaser queues it again with a new dispatch."""
    if not slots.hold_unclaimed(
        task_id=task_id,
        dispatch_id=dispatch_id,
        run_at=run_at,
        note=f"held: {reason}",
        waiting_for_slot=False,  # held for another reason: not in the slot line
    ):
        return None
    logger.info("Task %s held: %s", task_id, reason)
    return DeliveryOutcome("held", status=S.POSTPONED, note=reason)


def run_claimed(
    task: Task, spec: TaskTypeSpec | None, *, handler_time_limit: float | None = None
) -> str:
    """Run the handler of a task this worker has claimed, and record how the attempt ended."""
    ran = _run_handler(task, spec, handler_time_limit=handler_time_limit)
    if isinstance(ran, Succeeded):
        return _finish(
            task,
            S.SUCCEEDED,
            AttemptOutcome.SUCCEEDED,
            changes={"result": ran.result, "progress": 100},
        )
    return ran


def _run_handler(
    task: Task, spec: TaskTypeSpec | None, *, handler_time_limit: float | None = None
) -> Succeeded | str:
    """Run the handler of a claimed task: its result, or (any other ending, recorded here) the
    status the task went to. `handler_time_limit`: a soft limit of the handler's own (apps.tasks.
    soft_limit), for a task that shares its message; it ends as the message's soft limit does."""
    attempt = task.attempts
    bind_log_context(task_id=str(task.id), task_type=task.type, attempt=attempt)
    if spec is None:
        return _finish_failed(task, f"Unknown task type {task.type!r}: no handler registered.")

    context = TaskContext(
        task_id=str(task.id),
        task_type=task.type,
        attempt=attempt,
        owner_id=task.owner_id,
        report_progress=lambda percent, message: _report_progress(task, percent, message),
        read_cancel_requested=lambda: _cancel_requested(task),
    )
    try:
        with soft_time_limit(handler_time_limit):
            result = spec.run(context, dict(task.payload))
    except TaskCancelled as exc:
        return _finish(task, S.CANCELLED, AttemptOutcome.CANCELLED, error=str(exc) or "cancelled")
    except PermanentError as exc:
        return _finish_failed(task, str(exc) or type(exc).__name__)
    except SoftTimeLimitExceeded as exc:
        _drop_interrupted_connection()
        return _failed_attempt(task, spec, exc, retryable=True, message="time limit exceeded")
    except Exception as exc:
        return _failed_attempt(task, spec, exc)
    try:
        # The result is stored as JSON, nothing else (nor what PostgreSQL's jsonb refuses).
        text = json.dumps(result, allow_nan=False)
        if "\\u0000" in text:
            raise ValueError("a string holds the character U+0000")
        return Succeeded(text)
    except (TypeError, ValueError) as exc:
        return _finish_failed(task, f"The handler returned a result that is not JSON: {exc}")


def _drop_interrupted_connection() -> None:
    """A soft time limit that fell while the handler waited on PostgreSQL (its own query, its
    progress, its cancel check) leaves that query running on the connection: psycopg cancels it
    only for KeyboardInterrupt, so every later statement on the connection would fail ("another
    command is already in progress"): this attempt's ending, and a batch's other tasks and
    successes. Cancel the query and drop the connection; the next statement opens another."""
    raw = connection.connection
    if raw is None or raw.pgconn.transaction_status != TransactionStatus.ACTIVE:
        return
    logger.warning("A time limit interrupted a database query: the connection is dropped")
    try:
        raw.cancel_safe(timeout=5)
    except Exception as exc:  # closing ends the query's session anyway, once the query ends
        logger.info("Could not cancel the interrupted query: %s", exc)
    connection.close()


def _this_attempt(task: Task) -> tuple[str, tuple[object, ...]]:
    # A late worker whose attempt was already settled (reaped, lost) must not overwrite anything.
    return "AND t.attempts = %s", (task.attempts,)


def _finish(
    task: Task,
    to: TaskStatus,
    outcome: AttemptOutcome,
    *,
    error: str = "",
    changes: dict[str, object] | None = None,
    note: str = "",
) -> str:
    where, params = _this_attempt(task)
    moved = transition_one_moved(
        task_id=task.id,
        to=to,
        allowed_from={S.RUNNING},
        where=where,
        where_params=params,
        changes={
            "finished_at": Sql("statement_timestamp()"),
            "lease_expires_at": None,
            "error": error,
            **(changes or {}),
        },
        attempt=AttemptFinish(outcome=outcome, error=error),
        note=note or f"attempt {task.attempts}: {outcome}",
    )
    if not moved:
        return _settled_elsewhere(task)
    return to


def _finish_failed(task: Task, message: str) -> str:
    return _finish(task, S.FAILED, AttemptOutcome.FAILED, error=message, note=f"failed: {message}")


def _failed_attempt(
    task: Task,
    spec: TaskTypeSpec,
    exc: BaseException,
    *,
    retryable: bool | None = None,
    message: str = "",
) -> str:
    message = message or f"{type(exc).__name__}: {exc}"
    if retryable is None:
        retryable = spec.is_retryable(exc)
    if not retryable:
        logger.info("Task %s failed permanently: %s", task.id, message)
        return _finish_failed(task, message)
    outcome = _retry_or_fail(
        task_id=task.id,
        attempt=task.attempts,
        error=message,
        outcome=AttemptOutcome.FAILED,
        retry_after=exc.retry_after if isinstance(exc, RetryableError) else None,
    )
    return outcome.status if outcome else ""


def _retry_or_fail(
    *,
    task_id: uuid.UUID | str,
    attempt: int,
    error: str,
    outcome: AttemptOutcome,
    retry_after: float | None = None,
) -> FailureOutcome | None:
    """A retryable failure: wait with backoff if retries remain, otherwise fail for good; or, if
    a cancel was requested while the attempt ran, cancel rather than try again.

    The cancel is decided by the statements, not by the read: a cancel request can commit between
    the read and the move (it holds the row lock meanwhile), and the retry would then release the
    task to run again with `cancel_requested_at` set. So the retry or fail moves only while no
    cancel is requested, and if it does not move, the cancelled move is tried; both carry
    `attempts = n`, so an attempt settled elsewhere stays as it is.
    """
    row = (
        Task.objects.filter(id=task_id)
        .values("retries", "max_retries", "cancel_requested_at", "type")
        .first()
    )
    if row is None:
        return None
    finish = AttemptFinish(outcome=outcome, error=error)
    note = f"attempt {attempt} {outcome}: {error}"
    if row["cancel_requested_at"] is None:
        to: TaskStatus
        changes: dict[str, object] = {"lease_expires_at": None, "error": error}
        if row["retries"] < row["max_retries"]:
            retry_number = row["retries"] + 1
            spec = get_task_type(row["type"])  # the type's own backoff, else the platform's
            # At most MAX_RETRY_DELAY_SECONDS, whatever the handler or the type's backoff says.
            delay = retry_wait(
                retry_number,
                retry_after=retry_after,
                base=spec.backoff_base_seconds if spec else None,
                cap=spec.backoff_cap_seconds if spec else None,
            )
            run_at = timezone.now() + delay
            to = S.RETRYING
            outcome_note = f"retry {retry_number} of {row['max_retries']} at {run_at.isoformat()}"
            changes.update({"retries": Sql("t.retries + 1"), "run_at": run_at, "dispatch_id": None})
        else:
            to, outcome_note = S.FAILED, "no retries left"
            changes["finished_at"] = Sql("statement_timestamp()")
        moved = transition_one(
            task_id=task_id,
            to=to,
            allowed_from={S.RUNNING},
            where="AND t.attempts = %s AND t.cancel_requested_at IS NULL",
            where_params=(attempt,),
            changes=changes,
            attempt=finish,
            note=f"{note}; {outcome_note}",
        )
        if moved is not None:
            return FailureOutcome(status=moved.task.status, dispatch_id=moved.task.dispatch_id)
    # Someone asked to cancel while the attempt ran (before the read, or committed since it):
    # honour it rather than try again. Nothing moves if the attempt was settled elsewhere.
    moved = transition_one(
        task_id=task_id,
        to=S.CANCELLED,
        allowed_from={S.RUNNING},
        where="AND t.attempts = %s AND t.cancel_requested_at IS NOT NULL",
        where_params=(attempt,),
        changes={
            "lease_expires_at": None,
            "error": error,
            "finished_at": Sql("statement_timestamp()"),
        },
        attempt=finish,
        note=f"{note}; cancelled on request, not retried",
    )
    if moved is None:
        return None
    return FailureOutcome(status=moved.task.status, dispatch_id=moved.task.dispatch_id)


def attempt_lost(*, task_id: uuid.UUID | str, attempt: int, reason: str) -> FailureOutcome | None:
    """The worker running `attempt` is gone: count it as a failed attempt and retry or fail."""
    logger.warning("Task %s attempt %s lost: %s", task_id, attempt, reason)
    return _retry_or_fail(
        task_id=task_id, attempt=attempt, error=reason, outcome=AttemptOutcome.LOST
    )


def _report_progress(task: Task, percent: int, message: str) -> None:
    Task.objects.filter(id=task.id, status=S.RUNNING, attempts=task.attempts).update(
        progress=percent, progress_message=message, updated_at=timezone.now()
    )


def _cancel_requested(task: Task) -> bool:
    return Task.objects.filter(
        id=task.id, status=S.RUNNING, cancel_requested_at__isnull=False
    ).exists()
