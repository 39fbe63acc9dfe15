"""The dead-letter consumer: records on each task when and why its message was dead-lettered.

Messages reach `taskflow.deadletter` when a worker rejects them (the task failed for good), or
when the releaser fails a task whose attempt's lease expired. RabbitMQ's `x-death` header says
why, from which queue and when; we copy that onto the task and ack.
"""

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.db import close_old_connections
from kombu import Connection, Consumer, Message
from kombu.mixins import ConsumerMixin

from apps.tasks import services
from apps.tasks.queues import dead_letter_queue

logger = logging.getLogger(__name__)


def parse_dead_letter(body: Any, headers: dict[str, Any]) -> dict[str, Any] | None:
    """Task id, dispatch id, reason and time of a dead-lettered message; None if not ours."""
    task_id = dispatch_id = None
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    if isinstance(body, list) and body and isinstance(body[0], list) and len(body[0]) >= 2:
        task_id, dispatch_id = body[0][0], body[0][1]  # Celery protocol 2: [args, kwargs, embed]
    elif isinstance(body, dict) and "task_id" in body:
        task_id, dispatch_id = body.get("task_id"), body.get("dispatch_id")
    if not task_id:
        return None

    at = datetime.now(tz=UTC)
    reason = headers.get("x-taskflow-reason") or "unknown"
    deaths = headers.get("x-death") or []
    if deaths:
        death = deaths[0]
        reason = f"{death.get('reason', 'unknown')} from queue {death.get('queue', '?')}"
        if death.get("count", 1) > 1:
            reason += f" ({death['count']} times)"
        if isinstance(death.get("time"), datetime):
            at = death["time"] if death["time"].tzinfo else death["time"].replace(tzinfo=UTC)
    return {
        "task_id": str(task_id),
        "dispatch_id": str(dispatch_id or ""),
        "reason": reason,
        "at": at,
    }


def handle_dead_letter(body: Any, message: Message) -> None:
    parsed = parse_dead_letter(body, dict(message.headers or {}))
    if parsed is None:
        logger.warning("Dead letter that is not a TaskFlow task: headers=%s", message.headers)
        message.ack()
        return
    recorded = services.task_record_dead_letter(
        task_id=parsed["task_id"],
        dispatch_id=parsed["dispatch_id"] or None,
        reason=parsed["reason"],
        at=parsed["at"],
    )
    logger.info(
        "Dead letter for task %s (%s): %s",
        parsed["task_id"],
        parsed["reason"],
        "recorded" if recorded else "task not failed with this message (replayed or deleted)",
    )
    message.ack()


class DeadLetterConsumer(ConsumerMixin):
    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def get_consumers(self, consumer_cls: Any, channel: Any) -> list[Consumer]:
        return [
            consumer_cls(
                queues=[dead_letter_queue()],
                callbacks=[self.on_message],
                accept=["json", "application/json"],
                prefetch_count=50,
            )
        ]

    def on_message(self, body: Any, message: Message) -> None:
        # A long-lived process: drop database connections that broke or aged out, as Celery does.
        close_old_connections()
        handle_dead_letter(body, message)

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        logger.warning("Dead-letter consumer lost the broker (%s); retrying in %ss", exc, interval)
