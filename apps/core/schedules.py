"""beat's housekeeping rows in django-celery-beat's tables, made the same way by every app."""

import json

MAINTENANCE_QUEUE = "maintenance"


def ensure_periodic_task(
    *, name: str, task: str, every: int, period: str, expire_seconds: int
) -> None:
    """Create the schedule row `name` or set it back to these values (at every beat start).

    `period` is one of django-celery-beat's IntervalSchedule periods (IntervalSchedule.SECONDS...).
    The message goes to the maintenance queue, which both workers consume; one not picked up
    within `expire_seconds` is dropped (the next run does its work)."""
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    PeriodicTask.objects.update_or_create(
        name=name,
        defaults={
            "task": task,
            "interval": interval,
            "queue": MAINTENANCE_QUEUE,
            "expire_seconds": expire_seconds,
            "kwargs": json.dumps({}),
            "enabled": True,
        },
    )
