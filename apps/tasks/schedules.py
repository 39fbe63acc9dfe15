"""beat's periodic housekeeping, kept in django-celery-beat's tables (editable in the admin)."""

import json

from django_celery_beat.models import IntervalSchedule, PeriodicTask

RELEASE_TASK_NAME = "tasks.release_due"
RELEASE_SCHEDULE_NAME = "taskflow: release due tasks"


def ensure_release_schedule(*, interval_ms: int) -> PeriodicTask:
    """Create or update the releaser's schedule to run every `interval_ms`."""
    return ensure_heartbeat(
        name=RELEASE_SCHEDULE_NAME, task=RELEASE_TASK_NAME, interval_ms=interval_ms
    )


def ensure_heartbeat(*, name: str, task: str, interval_ms: int) -> PeriodicTask:
    """Create or update beat's row `name` to send `task` every `interval_ms` (milliseconds
    allowed) to the maintenance queue."""
    if interval_ms % 1000 == 0:
        every, period = interval_ms // 1000, IntervalSchedule.SECONDS
    else:
        every, period = interval_ms * 1000, IntervalSchedule.MICROSECONDS
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    # A message not picked up within a few intervals is useless: a newer one follows.
    expire_seconds = max(5, 5 * interval_ms // 1000)
    row, created = PeriodicTask.objects.get_or_create(
        name=name,
        defaults={
            "task": task,
            "interval": interval,
            "queue": "maintenance",
            "expire_seconds": expire_seconds,
            "kwargs": json.dumps({}),
        },
    )
    if not created:
        changed = []
        for field, value in (
            ("task", task),
            ("interval", interval),
            ("queue", "maintenance"),
            ("expire_seconds", expire_seconds),
            ("enabled", True),
        ):
            if getattr(row, field) != value:
                setattr(row, field, value)
                changed.append(field)
        if changed:
            row.save(update_fields=changed)
    return row
