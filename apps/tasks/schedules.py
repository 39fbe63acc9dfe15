"""beat's periodic housekeeping, kept in django-celery-beat's tables (editable in the admin)."""

import json

from django_celery_beat.models import IntervalSchedule, PeriodicTask

RELEASE_TASK_NAME = "tasks.release_due"
RELEASE_SCHEDULE_NAME = "taskflow: release due tasks"


def ensure_release_schedule(*, interval_ms: int) -> PeriodicTask:
    """Create or update the releaser's schedule to run every `interval_ms`."""
    if interval_ms % 1000 == 0:
        every, period = interval_ms // 1000, IntervalSchedule.SECONDS
    else:
        every, period = interval_ms * 1000, IntervalSchedule.MICROSECONDS
    interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=period)
    # A release message not picked up within a few intervals is useless: a newer one follows.
    expire_seconds = max(5, 5 * interval_ms // 1000)
    task, created = PeriodicTask.objects.get_or_create(
        name=RELEASE_SCHEDULE_NAME,
        defaults={
            "task": RELEASE_TASK_NAME,
            "interval": interval,
            "queue": "maintenance",
            "expire_seconds": expire_seconds,
            "kwargs": json.dumps({}),
        },
    )
    if not created:
        changed = []
        for field, value in (
            ("task", RELEASE_TASK_NAME),
            ("interval", interval),
            ("queue", "maintenance"),
            ("expire_seconds", expire_seconds),
            ("enabled", True),
        ):
            if getattr(task, field) != value:
                setattr(task, field, value)
                changed.append(field)
        if changed:
            task.save(update_fields=changed)
    return task
