"""Rows for tests: through the services (what production makes), or as a bare row in any state."""

import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from django.utils import timezone

from apps.accounts.models import User
from apps.tasks import services
from apps.tasks.models import Task
from apps.tasks.queues import TaskQueue
from apps.tasks.states import TaskStatus


def create_task(owner: User, type: str = "echo", payload: Any = None, **kwargs: Any) -> Task:
    task, _ = services.task_create(owner=owner, type=type, payload=payload or {}, **kwargs)
    return task


def create_postponed_tasks(
    owner: User, type: str, payloads: Iterable[Any], *, due_in: timedelta
) -> tuple[list[Task], datetime]:
    """Postponed tasks (through the service) that all fall due `due_in` after the last one is made.

    They are created an hour ahead and then moved in one UPDATE: created with a run_at a few seconds
    ahead, a slow machine (CI took 4 s for 300 creates) reaches that run_at before the last create,
    which the service then refuses as in the past."""
    tasks = [
        create_task(owner, type, payload, run_at=timezone.now() + timedelta(hours=1))
        for payload in payloads
    ]
    run_at = timezone.now() + due_in
    Task.objects.filter(id__in=[task.id for task in tasks]).update(run_at=run_at)
    for task in tasks:
        task.run_at = run_at
    return tasks, run_at


def make_task(
    owner: User, status: str = TaskStatus.QUEUED, type: str = "echo", **fields: Any
) -> Task:
    """A task row in any state, written directly (no history, no message): for tests of what reads
    or moves rows, not of how they are created."""
    return Task.objects.create(
        owner=owner,
        type=type,
        payload={"n": 1},
        queue=TaskQueue.DEFAULT.value,
        status=status,
        dispatch_id=uuid.uuid4(),
        **fields,
    )
