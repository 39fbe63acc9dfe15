"""beat's releaser: due postponed tasks and retry waits become queued, each exactly once."""

from datetime import timedelta

import pytest
from django.utils import timezone

from apps.tasks import services
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.queues import TaskQueue
from apps.tasks.schedules import RELEASE_SCHEDULE_NAME, ensure_release_schedule
from apps.tasks.states import TaskStatus
from tests.support.concurrency import at_once
from tests.tasks.factories import create_task

S = TaskStatus


def postpone(task: Task, *, seconds_ago: float = 1) -> None:
    """Make a postponed task due (run_at cannot be given in the past through the service)."""
    Task.objects.filter(id=task.id).update(run_at=timezone.now() - timedelta(seconds=seconds_ago))


def test_a_future_run_at_makes_the_task_postponed_with_no_message(user, broker):
    task = create_task(user, run_at=timezone.now() + timedelta(hours=1))
    assert task.status == S.POSTPONED
    assert task.dispatch_id is None
    assert services.release_due_tasks() == 0
    task.refresh_from_db()
    assert task.status == S.POSTPONED


@pytest.mark.django_db(transaction=True)
def test_due_tasks_are_released_and_published(user, broker):
    due = create_task(user, run_at=timezone.now() + timedelta(hours=1))
    later = create_task(user, run_at=timezone.now() + timedelta(hours=1))
    postpone(due)
    assert services.release_due_tasks() == 1
    due.refresh_from_db()
    later.refresh_from_db()
    assert due.status == S.QUEUED and due.dispatch_id is not None
    assert due.published_at is not None  # the broker confirmed the message
    assert broker.depth(TaskQueue.DEFAULT) == 1
    assert later.status == S.POSTPONED
    change = TaskStatusChange.objects.filter(task=due).last()
    assert change is not None
    assert (change.from_status, change.to_status, change.note) == (
        S.POSTPONED,
        S.QUEUED,
        "released",
    )


@pytest.mark.django_db(transaction=True)
def test_two_releasers_at_once_release_each_task_once(user, broker):
    tasks = [create_task(user, run_at=timezone.now() + timedelta(hours=1)) for _ in range(300)]
    Task.objects.filter(id__in=[t.id for t in tasks]).update(
        run_at=timezone.now() - timedelta(seconds=1)
    )
    counts = at_once(lambda: services.release_due_tasks(batch_size=20), 2)

    assert sum(counts) == 300
    assert all(c > 0 for c in counts), f"both releasers should have worked: {counts}"
    releases = TaskStatusChange.objects.filter(note="released", to_status=S.QUEUED)
    assert releases.count() == 300
    assert releases.values("task_id").distinct().count() == 300
    carried = broker.task_ids(TaskQueue.DEFAULT)  # echo: up to 16 tasks to a message
    assert sorted(carried) == sorted(str(i) for i in releases.values_list("task_id", flat=True))


def test_the_release_schedule_follows_the_setting(db):
    task = ensure_release_schedule(interval_ms=1000)
    assert task.name == RELEASE_SCHEDULE_NAME
    assert (task.interval.every, task.interval.period) == (1, "seconds")
    assert task.queue == "maintenance"
    task = ensure_release_schedule(interval_ms=250)
    assert (task.interval.every, task.interval.period) == (250_000, "microseconds")
    assert task.expire_seconds == 5
