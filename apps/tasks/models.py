"""Tasks, their attempts and their status history. PostgreSQL is the source of truth."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import F, Q

from apps.tasks.states import TaskStatus


class AttemptOutcome(models.TextChoices):
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"  # the handler raised
    LOST = "lost", "Lost"  # the worker died, timed out or lost its broker connection
    CANCELLED = "cancelled", "Cancelled"


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: owner_id leads task_owner_created, which serves every look-up by owner
    # (and ON DELETE CASCADE); another index would only slow writes.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="tasks", db_index=False
    )
    type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    queue = models.CharField(max_length=50)
    status = models.CharField(max_length=20, choices=TaskStatus.choices)

    max_retries = models.PositiveSmallIntegerField(default=3)
    # Retries used since the task was last (re)started by hand; attempts counts every attempt ever.
    retries = models.PositiveSmallIntegerField(default=0)
    attempts = models.PositiveIntegerField(default=0)

    # When a postponed or retrying task becomes due.
    run_at = models.DateTimeField(null=True, blank=True)
    # The message that may run the task now; any other message for it is stale and is dropped.
    dispatch_id = models.UUIDField(null=True, blank=True)
    # Set once the broker confirmed the message for dispatch_id; a queued task without it is
    # published again by the releaser (the broker was down, or the publisher died after commit).
    published_at = models.DateTimeField(null=True, blank=True)
    # Past this a running attempt is presumed lost (its worker died without the broker noticing).
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # Set when the task was held because its type had no free slot (its concurrency limit): it
    # waits `postponed` with no run_at until a slot frees, and is released oldest first
    # (apps.tasks.slots). Kept while the released task is queued (it then counts as taking a
    # slot), cleared by its claim, a cancel, a reschedule or another hold.
    waiting_for_slot_since = models.DateTimeField(null=True, blank=True)

    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    progress = models.PositiveSmallIntegerField(default=0)
    progress_message = models.CharField(max_length=200, blank=True, default="")

    dead_lettered_at = models.DateTimeField(null=True, blank=True)
    dead_letter_reason = models.CharField(max_length=200, blank=True, default="")

    # NULL means "no key", which the unique constraint leaves out.
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)  # noqa: DJ001
    idempotency_fingerprint = models.CharField(max_length=64, blank=True, default="")
    # Where TaskFlow POSTs the task once it ends (apps.callbacks); "" for none. A constant
    # default: adding the column rewrote no table, and a task without one costs nothing more.
    callback_url = models.CharField(max_length=2000, blank=True, default="", db_default="")

    created_at = models.DateTimeField(auto_now_add=True, db_index=False)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="task_unique_idempotency_key_per_owner",
            ),
            models.CheckConstraint(
                condition=Q(status__in=TaskStatus.values), name="task_status_is_known"
            ),
        ]
        indexes = [
            # The task list (GET /api/tasks): one page of the owner's tasks in index order.
            models.Index(fields=["owner", "-created_at", "-id"], name="task_owner_created"),
            # The list filtered by one status (?status=failed, with or without &type=): in index
            # order too, however rare the status (else the list walks task_owner_created and
            # throws away the other statuses' rows: 97 ms p50 at 1M rows for failed + fetch_url).
            # Without the succeeded rows (most of the table, and task_owner_created finds them
            # at once): a tenth of the size, and a task's last UPDATE adds no entry to it.
            models.Index(
                fields=["owner", "status", "-created_at", "-id"],
                name="task_owner_status_pending",
                condition=~Q(status=TaskStatus.SUCCEEDED),
            ),
            # The admin's changelist, all owners, newest first: NULLS LAST on purpose (created_at
            # and id are never NULL, so the order is the same). An owner's list orders by
            # created_at DESC, which PostgreSQL sorts NULLS FIRST, and an index can only give a
            # list its order with the same NULLS placement: so no owner-scoped list can walk this
            # index (all owners' rows, newest first) and throw away everybody else's rows. With a
            # plain (-created_at, -id) index the planner did, expecting the owner's rows to come
            # soon: 17 ms and 102k rows thrown away for a first page at 1M rows whose owner was
            # idle while others created 100k tasks. The admin orders with NULLS LAST
            # (apps.tasks.admin.TaskChangeList.get_ordering).
            models.Index(
                F("created_at").desc(nulls_last=True),
                F("id").desc(nulls_last=True),
                name="task_admin_created",
            ),
            # The releaser's scan: only rows that wait for their time.
            models.Index(
                fields=["run_at"],
                name="task_due",
                condition=Q(status__in=[TaskStatus.POSTPONED, TaskStatus.RETRYING]),
            ),
            # The republisher's scan: queued rows whose message is not confirmed.
            models.Index(
                fields=["updated_at"],
                name="task_unpublished",
                condition=Q(status=TaskStatus.QUEUED, published_at__isnull=True),
            ),
            models.Index(
                fields=["lease_expires_at"],
                name="task_running_lease",
                condition=Q(status=TaskStatus.RUNNING),
            ),
            # The concurrency limit's waiting line: a type's waiting tasks, oldest first, and its
            # released ones not yet claimed (apps.tasks.slots). Only tasks that were held.
            models.Index(
                fields=["type", "created_at", "id"],
                name="task_waiting_for_slot",
                condition=Q(
                    waiting_for_slot_since__isnull=False,
                    status__in=[TaskStatus.POSTPONED, TaskStatus.QUEUED],
                ),
            ),
            # ?dead_lettered=true in the list (and the admin's dead-lettered filter and its count):
            # only the dead-lettered rows, in the list's order.
            models.Index(
                fields=["owner", "-created_at", "-id"],
                name="task_owner_dead_lettered",
                condition=Q(dead_lettered_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id} ({self.status})"


class TaskAttempt(models.Model):
    # No index of its own: attempt_unique_number (task, number) serves lookups and the cascade, and
    # every claim writes this table.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="attempt_rows", db_index=False
    )
    number = models.PositiveIntegerField()
    outcome = models.CharField(
        max_length=20, choices=AttemptOutcome.choices, default=AttemptOutcome.RUNNING
    )
    worker = models.CharField(max_length=200, blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["task", "number"]
        constraints = [
            models.UniqueConstraint(fields=["task", "number"], name="attempt_unique_number"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.task_id}: {self.outcome}"


class TaskStatusChange(models.Model):
    """The audit trail: one row for every status change, written with the change itself."""

    # No index of its own: status_change_task_at (task, at) serves lookups and the cascade, and
    # every status change writes this table.
    task = models.ForeignKey(
        Task, on_delete=models.CASCADE, related_name="status_changes", db_index=False
    )
    from_status = models.CharField(max_length=20, blank=True, default="")
    to_status = models.CharField(max_length=20)
    at = models.DateTimeField()
    attempt = models.PositiveIntegerField(default=0)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # status_change_actor below: only the rows that have an actor
    )
    note = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["task", "at", "id"]
        indexes = [
            models.Index(fields=["task", "at"], name="status_change_task_at"),
            # For SET NULL when a user is deleted. Workers' changes have no actor: leaving them out
            # spares an index write on most status changes.
            models.Index(
                fields=["actor"], name="status_change_actor", condition=Q(actor__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.task_id}: {self.from_status or '-'} -> {self.to_status}"
