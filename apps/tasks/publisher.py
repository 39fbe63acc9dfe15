"""Publishing execution messages, always after the task row has committed.

The database row is the truth; a message is only a nudge. A task whose message did not reach the
broker stays `queued` with `published_at` unset, and the releaser publishes it again.
"""

import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import transaction
from django.utils import timezone
from kombu import Connection, Producer

from apps.tasks.models import Task
from apps.tasks.queues import DEAD_LETTER_EXCHANGE_NAME, dead_letter_exchange

logger = logging.getLogger(__name__)

EXECUTE_TASK_NAME = "tasks.execute"
# Give the handler's own limit a margin before Celery's soft limit fires, and a second margin
# before the hard kill.
SOFT_LIMIT_MARGIN_SECONDS = 5
HARD_LIMIT_MARGIN_SECONDS = 30


@dataclass(frozen=True)
class Dispatch:
    task_id: uuid.UUID
    dispatch_id: uuid.UUID
    queue: str
    time_limit_seconds: int | None = None
    # Carried in the message so that the worker can admit and claim without reading the row first.
    task_type: str = ""


def _publish(dispatch: Dispatch) -> bool:
    from apps.tasks.tasks import execute

    options: dict[str, object] = {}
    if dispatch.time_limit_seconds:
        options["soft_time_limit"] = dispatch.time_limit_seconds + SOFT_LIMIT_MARGIN_SECONDS
        options["time_limit"] = dispatch.time_limit_seconds + HARD_LIMIT_MARGIN_SECONDS
    try:
        execute.apply_async(
            args=[str(dispatch.task_id), str(dispatch.dispatch_id), dispatch.task_type],
            task_id=str(dispatch.dispatch_id),
            queue=dispatch.queue,
            routing_key=dispatch.queue,
            # Fail fast when the broker is away: the releaser publishes the task again later.
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0.1, "interval_step": 0.2},
            **options,
        )
    except Exception as exc:
        logger.warning(
            "Could not publish task %s (will be published again): %s", dispatch.task_id, exc
        )
        return False
    return True


def publish_now(dispatches: Iterable[Dispatch]) -> int:
    """Publish and mark what the broker confirmed. Returns how many were confirmed."""
    confirmed = [d for d in dispatches if _publish(d)]
    if confirmed:
        Task.objects.filter(
            id__in=[d.task_id for d in confirmed],
            dispatch_id__in=[d.dispatch_id for d in confirmed],
        ).update(published_at=timezone.now())
    return len(confirmed)


def publish_on_commit(dispatches: list[Dispatch]) -> None:
    if dispatches:
        transaction.on_commit(lambda: publish_now(dispatches))


def dispatch_for(task: Task) -> Dispatch:
    from apps.handlers.registry import get_task_type

    spec = get_task_type(task.type)
    assert task.dispatch_id is not None
    return Dispatch(
        task_id=task.id,
        dispatch_id=task.dispatch_id,
        queue=task.queue,
        time_limit_seconds=spec.time_limit_seconds if spec else None,
        task_type=task.type,
    )


def publish_dead_letter(*, task_id: uuid.UUID, dispatch_id: uuid.UUID | None, reason: str) -> None:
    """Put a record in the dead-letter queue for a task that failed with no message to reject.

    (A running attempt whose lease expired: its message is gone or held by a stuck worker.)
    """
    from taskflow.celery import app

    with Connection(app.conf.broker_url, connect_timeout=3) as conn:
        producer = Producer(conn.channel(), exchange=dead_letter_exchange)
        producer.publish(
            {"task_id": str(task_id), "dispatch_id": str(dispatch_id or "")},
            routing_key=DEAD_LETTER_EXCHANGE_NAME,
            headers={"x-taskflow-reason": reason, "task": EXECUTE_TASK_NAME},
            declare=[dead_letter_exchange],
            serializer="json",
            delivery_mode=2,
        )
