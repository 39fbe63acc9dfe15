"""The task state machine: one set of states and the moves allowed between them.

postponed --release--> queued --claim--> running --success--> succeeded
    ^--reschedule (PATCH run_at)--+
    |                    ^  |               |  \\--permanent / out of retries--> failed
    |                    |  |               \\--retryable failure--> retrying --release--> queued
    +--cancel--> cancelled <-+--cancel------+ (running: cancel is cooperative)
failed / cancelled --manual retry--> queued
"""

from django.db import models


class TaskStatus(models.TextChoices):
    POSTPONED = "postponed", "Postponed"  # waits for run_at
    QUEUED = "queued", "Queued"  # published (or about to be) to its queue
    RUNNING = "running", "Running"  # a worker holds it
    RETRYING = "retrying", "Waiting to retry"  # an attempt failed; waits for its backoff (run_at)
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"  # permanently, or out of retries; dead-lettered
    CANCELLED = "cancelled", "Cancelled"


S = TaskStatus

TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    S.POSTPONED: frozenset({S.QUEUED, S.CANCELLED}),
    S.QUEUED: frozenset({S.RUNNING, S.CANCELLED, S.POSTPONED}),
    S.RUNNING: frozenset({S.SUCCEEDED, S.FAILED, S.RETRYING, S.CANCELLED}),
    S.RETRYING: frozenset({S.QUEUED, S.CANCELLED}),
    S.SUCCEEDED: frozenset(),
    S.FAILED: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
}

FINAL_STATES = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
NOT_STARTED_STATES = frozenset({S.POSTPONED, S.QUEUED, S.RETRYING})
# Waiting in the database for their run_at, released by beat.
WAITING_STATES = frozenset({S.POSTPONED, S.RETRYING})
ACTIVE_STATES = frozenset({S.POSTPONED, S.QUEUED, S.RUNNING, S.RETRYING})


def sources_of(target: TaskStatus) -> frozenset[TaskStatus]:
    """The states from which `target` may be reached."""
    return frozenset(src for src, targets in TRANSITIONS.items() if target in targets)
