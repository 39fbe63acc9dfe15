"""beat fires due schedules with a heartbeat of its own, every RELEASE_INTERVAL_MS.

Not in the releaser's heartbeat (tasks.release_due): a burst of due schedules (each a create, a
commit and a publish, ~6 ms) would hold back the release of postponed tasks and retries behind
it. Two runs at once (one slower than the interval) share the work: each schedule is claimed
with SKIP LOCKED."""

from typing import Any

from celery import shared_task
from celery.signals import beat_init
from django.conf import settings

from apps.schedules import services

FIRE_DUE_TASK_NAME = "schedules.fire_due"
FIRE_DUE_SCHEDULE_NAME = "taskflow: fire due schedules"


@shared_task(name=FIRE_DUE_TASK_NAME, ignore_result=True, acks_late=False)
def fire_due() -> int:
    return services.fire_due_schedules()


@beat_init.connect
def ensure_fire_due_schedule_on_beat_start(sender: Any, **kwargs: Any) -> None:
    from apps.tasks.schedules import ensure_heartbeat

    ensure_heartbeat(
        name=FIRE_DUE_SCHEDULE_NAME,
        task=FIRE_DUE_TASK_NAME,
        interval_ms=settings.TASKFLOW["RELEASE_INTERVAL_MS"],
    )
