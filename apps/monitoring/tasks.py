"""Celery side of monitoring: the rollup fold that beat runs, and the task context on worker log
lines (task_id, task_type, attempt; see apps.core.logging)."""

from typing import Any

from celery import shared_task
from celery.signals import beat_init, task_postrun, task_prerun

from apps.core.logging import bind_log_context, clear_log_context
from apps.core.schedules import ensure_periodic_task
from apps.monitoring import rollups

FOLD_TASK_NAME = "monitoring.fold_rollups"
FOLD_SCHEDULE_NAME = "taskflow: fold monitoring rollups"
FOLD_EVERY_SECONDS = 300


@shared_task(name=FOLD_TASK_NAME, ignore_result=True, acks_late=False)
def fold_rollups() -> int:
    return rollups.fold_minute_stats()


def ensure_fold_schedule() -> None:
    ensure_periodic_task(
        name=FOLD_SCHEDULE_NAME,
        task=FOLD_TASK_NAME,
        every=FOLD_EVERY_SECONDS,
        period="seconds",
        expire_seconds=FOLD_EVERY_SECONDS,
    )


@beat_init.connect
def ensure_fold_schedule_on_beat_start(sender: Any, **kwargs: Any) -> None:
    ensure_fold_schedule()


@task_prerun.connect
def bind_task_log_context(
    sender: Any = None, task_id: str | None = None, args: Any = None, **kwargs: Any
) -> None:
    clear_log_context()
    context: dict[str, Any] = {"celery_task_id": task_id}
    if getattr(sender, "name", "") == "tasks.execute" and args:
        context["task_id"] = str(args[0])  # the TaskFlow task; type and attempt follow on claim
    bind_log_context(**context)


@task_postrun.connect
def clear_task_log_context(**kwargs: Any) -> None:
    clear_log_context()
