"""Celery entry points. Thin: they take ids and call services."""

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import shared_task
from celery.exceptions import Reject
from celery.signals import beat_init, worker_ready
from django.conf import settings
from django.db import InterfaceError, OperationalError, close_old_connections

from apps.tasks import execution, services
from apps.tasks.topology import declare_topology

DATABASE_AWAY_PAUSE_SECONDS = 1.0


@contextmanager
def _requeued_while_database_away() -> Iterator[None]:
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        # The database is away. Hand the message back (it comes back marked redelivered, which
        # settles an attempt that had already started) after a pause, so as not to spin.
        close_old_connections()
        time.sleep(DATABASE_AWAY_PAUSE_SECONDS)
        raise Reject(f"database unavailable: {exc}", requeue=True) from exc


# How an execution message (one task or a batch) is delivered: acknowledged once handled, handed
# back if its pool process dies.
EXECUTION_TASK_OPTIONS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    # A hard time-limit kill hands the message back; its redelivery settles the lost attempt(s).
    "acks_on_timeout": False,
    "ignore_result": True,
}


def message_time_limit(task: Any) -> float | None:
    """The hard time limit the worker enforces on the message being run: the one the message
    carries (`timelimit`: [hard, soft], set by the publisher from the type's limit at publish
    time), else the task's default, else the app's (Celery's Request does the same). The lease
    is computed from it, not from the type's limit now (execution._lease_seconds)."""
    carried = (task.request.timelimit or (None, None))[0]
    limit = carried or task.time_limit or task.app.conf.task_time_limit
    return float(limit) if limit else None


def carried_soft_time_limit(task: Any) -> float | None:
    """The soft time limit the message being run carries (set by the publisher from the type's
    limit), None if it carries none: a batch's tasks get their own limits from it."""
    soft = (task.request.timelimit or (None, None))[1]
    return float(soft) if soft else None


@shared_task(name="tasks.execute", **EXECUTION_TASK_OPTIONS)
def execute(self: Any, task_id: str, dispatch_id: str, task_type: str = "") -> str:
    delivery_info = self.request.delivery_info or {}
    with _requeued_while_database_away():
        outcome = execution.handle_delivery(
            task_id=task_id,
            dispatch_id=dispatch_id,
            task_type=task_type,
            redelivered=bool(delivery_info.get("redelivered")),
            worker=f"{self.request.hostname}",
            time_limit=message_time_limit(self),
        )
    if outcome.dead_letter:
        # Failed for good: the message goes to the dead-letter exchange (see apps.tasks.queues).
        raise Reject(f"task {task_id} failed: {outcome.note or outcome.status}", requeue=False)
    return outcome.action


@shared_task(name="tasks.execute_batch", **EXECUTION_TASK_OPTIONS)
def execute_batch(self: Any, task_type: str, pairs: list[list[str]]) -> dict[str, int]:
    """Several tasks of a type that runs in batches (apps.tasks.execution.handle_batch). The
    message is acknowledged when every task in it is settled; any that failed for good went to
    the dead-letter queue as a record of its own. Handed back whole if the database or the
    broker is away: its redelivery settles task by task what had started."""
    delivery_info = self.request.delivery_info or {}
    try:
        with _requeued_while_database_away():
            outcomes = execution.handle_batch(
                task_type=task_type,
                pairs=[(str(task_id), str(dispatch_id)) for task_id, dispatch_id in pairs],
                redelivered=bool(delivery_info.get("redelivered")),
                worker=f"{self.request.hostname}",
                queue=str(delivery_info.get("routing_key") or ""),
                time_limit=message_time_limit(self),
                soft_time_limit=carried_soft_time_limit(self),
            )
    except execution.DeadLettersNotPublished as exc:
        time.sleep(DATABASE_AWAY_PAUSE_SECONDS)
        raise Reject(str(exc), requeue=True) from exc
    return dict(Counter(outcome.action for _, _, outcome in outcomes))


@shared_task(name="tasks.release_due", ignore_result=True, acks_late=False)
def release_due() -> dict[str, int]:
    """Beat's heartbeat: release due tasks, republish unconfirmed ones, settle expired leases."""
    return {
        "released": services.release_due_tasks(),
        "republished": services.republish_unconfirmed(),
        "recovered": services.republish_lost(),
        "reaped": services.reap_expired_leases(),
    }


DELETE_EXPIRED_TASK_NAME = "tasks.delete_expired"
DELETE_EXPIRED_SCHEDULE_NAME = "taskflow: delete expired tasks"


@shared_task(name=DELETE_EXPIRED_TASK_NAME, ignore_result=True, acks_late=False)
def delete_expired() -> int:
    return services.delete_expired_tasks()


@beat_init.connect
def ensure_delete_expired_schedule_on_beat_start(sender: Any, **kwargs: Any) -> None:
    from apps.core.schedules import ensure_periodic_task

    ensure_periodic_task(
        name=DELETE_EXPIRED_SCHEDULE_NAME,
        task=DELETE_EXPIRED_TASK_NAME,
        every=1,
        period="hours",
        expire_seconds=3600,  # a run missed is done by the next one
    )


@worker_ready.connect
def declare_topology_on_worker_start(sender: Any, **kwargs: Any) -> None:
    with sender.app.connection_for_write() as connection:
        declare_topology(connection)


@beat_init.connect
def exit_surely_on_beat_term(sender: Any, **kwargs: Any) -> None:
    # beat installed its SIGTERM handler just before it sends beat_init.
    from taskflow.startup import exit_even_if_a_finalizer_swallows_it

    exit_even_if_a_finalizer_swallows_it()


@beat_init.connect
def ensure_release_schedule_on_beat_start(sender: Any, **kwargs: Any) -> None:
    # The schedule follows RELEASE_INTERVAL_MS whatever the database held before.
    from apps.tasks.schedules import ensure_release_schedule

    ensure_release_schedule(interval_ms=settings.TASKFLOW["RELEASE_INTERVAL_MS"])
