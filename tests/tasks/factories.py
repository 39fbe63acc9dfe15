"""Rows for tests: through the services (what production makes), or as a bare row in any state."""

import uuid
from typing import Any

from apps.accounts.models import User
from apps.tasks import services
from apps.tasks.models import Task
from apps.tasks.queues import TaskQueue
from apps.tasks.states import TaskStatus


def create_task(owner: User, type: str = "echo", payload: Any = None, **kwargs: Any) -> Task:
    task, _ = services.task_create(owner=owner, type=type, payload=payload or {}, **kwargs)
    return task


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
