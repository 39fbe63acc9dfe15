"""Rows for tests, made through the services so that they are what production makes."""

from typing import Any

from apps.accounts.models import User
from apps.tasks import services
from apps.tasks.models import Task


def create_task(owner: User, type: str = "echo", payload: Any = None, **kwargs: Any) -> Task:
    task, _ = services.task_create(owner=owner, type=type, payload=payload or {}, **kwargs)
    return task
