"""Run a task as a worker does (apps.tasks.execution.handle_delivery), and wait out retries."""

from typing import Any

from django.utils import timezone

from apps.accounts.models import User
from apps.tasks import services
from apps.tasks.execution import DeliveryOutcome, handle_delivery
from apps.tasks.models import Task
from tests.support.wait import wait_for


def create(owner: User, type: str, payload: dict[str, Any], **kwargs: Any) -> Task:
    task, _ = services.task_create(owner=owner, type=type, payload=payload, **kwargs)
    return task


def deliver(task: Task, *, redelivered: bool = False) -> DeliveryOutcome:
    task.refresh_from_db()
    outcome = handle_delivery(
        task_id=str(task.id),
        dispatch_id=str(task.dispatch_id),
        task_type=task.type,  # as the publisher's messages do
        redelivered=redelivered,
        worker="test-worker",
    )
    task.refresh_from_db()
    return outcome


def result_of(task: Task) -> dict[str, Any]:
    assert isinstance(task.result, dict), f"task is {task.status}: {task.error}"
    return task.result


def release(task: Task) -> None:
    """Let the retry wait pass (tests use millisecond backoff) and queue the task again."""
    task.refresh_from_db()
    run_at = task.run_at
    assert run_at is not None, f"task is {task.status}, not waiting to retry"
    wait_for(lambda: timezone.now() >= run_at, timeout=5, what="the retry wait")
    assert services.release_due_tasks() >= 1
    task.refresh_from_db()
