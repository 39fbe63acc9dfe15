"""Finished tasks are deleted TASK_RETENTION_DAYS after they finished (beat, hourly); 0 keeps
them for ever. Their attempts and history go with them, and the counts follow."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from apps.core.exceptions import NotFound
from apps.tasks import services
from apps.tasks import tasks as task_tasks
from apps.tasks.models import Task, TaskAttempt, TaskStatusChange
from apps.tasks.states import TaskStatus
from taskflow.celery import app
from tests.handlers.runner import create, deliver

S = TaskStatus


def finished_days_ago(task: Task, days: float) -> None:
    Task.objects.filter(id=task.id).update(finished_at=timezone.now() - timedelta(days=days))


def ran(user: Any, type: str = "echo", **payload: Any) -> Task:
    task = create(user, type, payload, max_retries=0)
    deliver(task)
    return task


@pytest.fixture
def expired_and_kept(user: Any, settings: Any) -> tuple[list[Task], list[Task]]:
    settings.TASKFLOW = {**settings.TASKFLOW, "TASK_RETENTION_DAYS": 7}
    succeeded, failed = ran(user), ran(user, "test_permanent")
    cancelled = create(user, "echo", {}, run_at=timezone.now() + timedelta(hours=1))
    services.task_cancel(task=cancelled, actor=None)
    recent = ran(user)
    waiting = create(user, "echo", {}, run_at=timezone.now() + timedelta(hours=1))
    for task in (succeeded, failed, cancelled):
        finished_days_ago(task, 8)
    finished_days_ago(recent, 6)
    # An old task still waiting: it has no finished_at, whatever its age.
    Task.objects.filter(id=waiting.id).update(created_at=timezone.now() - timedelta(days=30))
    return [succeeded, failed, cancelled], [recent, waiting]


def test_finished_tasks_past_the_retention_go_with_their_attempts_and_history(
    expired_and_kept, api
):
    expired, kept = expired_and_kept
    assert {t.status for t in Task.objects.filter(id__in=[t.id for t in expired])} == {
        S.SUCCEEDED,
        S.FAILED,
        S.CANCELLED,
    }
    before = api.get("/api/stats").json()["total"]

    assert services.delete_expired_tasks() == 3

    gone = [t.id for t in expired]
    assert not Task.objects.filter(id__in=gone).exists()
    assert not TaskAttempt.objects.filter(task_id__in=gone).exists()
    assert not TaskStatusChange.objects.filter(task_id__in=gone).exists()
    assert set(Task.objects.values_list("id", flat=True)) == {t.id for t in kept}
    assert api.get("/api/stats").json()["total"] == before - 3  # the counts follow
    assert services.delete_expired_tasks() == 0


def test_a_retention_of_zero_keeps_every_task(expired_and_kept, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "TASK_RETENTION_DAYS": 0}
    assert services.delete_expired_tasks() == 0
    assert Task.objects.count() == 5


def test_a_large_backlog_goes_in_batches(user, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "TASK_RETENTION_DAYS": 1}
    tasks = [ran(user) for _ in range(5)]
    for task in tasks:
        finished_days_ago(task, 2)
    assert services.delete_expired_tasks(batch_size=2) == 5
    assert not Task.objects.exists()


def test_beat_runs_the_deletion_hourly(db):
    task_tasks.ensure_delete_expired_schedule_on_beat_start(sender=None)
    task_tasks.ensure_delete_expired_schedule_on_beat_start(sender=None)  # still one schedule
    [schedule] = PeriodicTask.objects.filter(task=task_tasks.DELETE_EXPIRED_TASK_NAME)
    assert (schedule.enabled, schedule.queue) == (True, "maintenance")
    assert (schedule.interval.every, schedule.interval.period) == (1, "hours")
    assert task_tasks.DELETE_EXPIRED_TASK_NAME in app.tasks


@pytest.mark.parametrize("action", ["retry", "cancel", "delete"])
def test_a_task_retried_cancelled_or_deleted_as_the_retention_deletes_it_is_404(
    user: Any, settings: Any, action: str
):
    """Regression: the request read the failed task, the hourly run deleted it before the
    request's move, and the move's fallback `Task.objects.get` of the task raised DoesNotExist:
    a 500 instead of the 404 of a task that is gone (a delete answered 409 "The task is None")."""
    settings.TASKFLOW = {**settings.TASKFLOW, "TASK_RETENTION_DAYS": 7}
    failed = ran(user, "test_permanent")
    finished_days_ago(failed, 8)
    read_by_the_request = Task.objects.get(id=failed.id)
    assert services.delete_expired_tasks() == 1

    moves = {
        "retry": lambda: services.task_retry(task=read_by_the_request, actor=user),
        "cancel": lambda: services.task_cancel(task=read_by_the_request, actor=user),
        "delete": lambda: services.task_delete(task=read_by_the_request),
    }
    with pytest.raises(NotFound) as refused:
        moves[action]()
    assert refused.value.code == "task_not_found"
