"""The dead-letter consumer: records on each task when and why its message was dead-lettered.

Messages reach `taskflow.deadletter` when a worker rejects them (the task failed for good), or
as a record of their own: a task of a batched message that failed for good (the message carries
others), and a task the releaser failed when its attempt's lease expired. RabbitMQ's `x-death`
header (or our own `x-taskflow-reason`) says why, from which queue and when; we copy that onto the
task and ack.
"""

import json
import logging
from datetime import UTC, datetime
from typing import Any

from django.db import InterfaceError, OperationalError, close_old_connections
from kombu import Connection, Consumer, Message
from kombu.mixins import ConsumerMixin

from apps.core.text import are_uuids
from apps.tasks import services
from apps.tasks.queues import dead_letter_queue

logger = logging.getLogger(__name__)


def parse_dead_letters(body: Any, headers: dict[str, Any]) -> list[dict[str, Any]]:
    """Task id, dispatch id, reason and time of each task of a dead-lettered message (a batched
    message carries several); none if it is not ours.

    Only ids that parse as UUIDs count (the dispatch id may be absent): a Celery message of some
    other task (another app's, a task renamed in a deploy) rejected by a worker lands here too,
    with arguments of its own shape, and those are logged and dropped, not looked up."""
    pairs: list[tuple[Any, Any]] = []
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            body = None
    args = body[0] if isinstance(body, list) and body and isinstance(body[0], list) else None
    if args and len(args) == 2 and isinstance(args[1], list):
        # tasks.execute_batch: [task_type, [[task_id, dispatch_id], ...]] (Celery protocol 2)
        pairs = [(p[0], p[1]) for p in args[1] if isinstance(p, list) and len(p) == 2]
    elif args and len(args) >= 2:
        pairs = [(args[0], args[1])]  # tasks.execute: [task_id, dispatch_id, task_type]
    elif isinstance(body, dict) and "task_id" in body:
        pairs = [(body.get("task_id"), body.get("dispatch_id"))]
    ours = [
        (task_id, dispatch_id)
        for task_id, dispatch_id in pairs
        if are_uuids(task_id) and (not dispatch_id or are_uuids(dispatch_id))
    ]
    if len(ours) < len(pairs):
        logger.warning(
            "Dead letter with ids that are not TaskFlow's, ignored: %s",
            repr([pair for pair in pairs if pair not in ours])[:500],
        )
    pairs = ours
    if not pairs:
        return []

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
    return [
        {"task_id": str(task_id), "dispatch_id": str(dispatch_id or ""), "reason": reason, "at": at}
        for task_id, dispatch_id in pairs
    ]


def handle_dead_letter(body: Any, message: Message) -> None:
    """Record the message's tasks and ack it. A message that cannot be handled for any reason
    other than the database being away is logged (with the traceback) and rejected without
    requeue (the dead-letter queue has no dead-letter exchange: it is dropped), so that one bad
    message cannot stop the consumer, which would meet it again at every start. With the database
    away the error propagates: the process stops, and the message, unacked, is delivered again."""
    try:
        _record_dead_letter(body, message)
    except (OperationalError, InterfaceError):
        raise
    except Exception:
        logger.exception(
            "Dead letter that could not be recorded, rejected (dropped): headers=%s body=%s",
            message.headers,
            repr(body)[:500],
        )
        message.reject(requeue=False)
        return
    message.ack()


def _record_dead_letter(body: Any, message: Message) -> None:
    parsed_all = parse_dead_letters(body, dict(message.headers or {}))
    if not parsed_all:
        logger.warning("Dead letter that is not a TaskFlow task: headers=%s", message.headers)
        return
    for parsed in parsed_all:
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
