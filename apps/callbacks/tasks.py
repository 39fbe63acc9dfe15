"""Celery entry points of the callbacks. Thin: they take ids and call services."""

from typing import Any

from celery import shared_task
from celery.signals import beat_init
from django.conf import settings

from apps.callbacks import services

DISPATCH_TASK_NAME = "callbacks.dispatch_due"
DISPATCH_SCHEDULE_NAME = "taskflow: dispatch due callbacks"
DELIVER_TASK_NAME = "callbacks.deliver"


@shared_task(name=DISPATCH_TASK_NAME, ignore_result=True, acks_late=False)
def dispatch_due() -> int:
    """beat's heartbeat of its own (not the releaser's: a burst of callbacks must not delay
    releases); two runs at once share the due rows (SKIP LOCKED)."""
    return services.dispatch_due_callbacks()


# Acknowledged once handled and handed back if the pool process dies, as the executions are
# (apps.tasks.tasks.EXECUTION_TASK_OPTIONS): a POST cut short is made again. Never rejected to
# the dead-letter queue: the outbox row records every outcome. The time limits bound a POST that
# the timeout does not (a slow trickle); they stay under the dispatch lease.
DELIVER_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    "soft_time_limit": 60,
    "time_limit": 90,
}


@shared_task(name=DELIVER_TASK_NAME, **DELIVER_TASK_OPTIONS)
def deliver(callback_id: int, lease: str | None = None) -> str:
    # `lease`: the dispatch's claim (None in a message of the previous release: no check).
    return services.deliver_callback(int(callback_id), lease)


@beat_init.connect
def ensure_dispatch_schedule_on_beat_start(sender: Any, **kwargs: Any) -> None:
    from apps.tasks.schedules import ensure_heartbeat

    ensure_heartbeat(
        name=DISPATCH_SCHEDULE_NAME,
        task=DISPATCH_TASK_NAME,
        interval_ms=settings.TASKFLOW["RELEASE_INTERVAL_MS"],
    )
