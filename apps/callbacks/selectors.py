from typing import Any

from apps.callbacks.models import TaskCallback
from apps.tasks.models import Task


def callback_summary(task: Task) -> dict[str, Any] | None:
    """The task's latest callback, as its detail shows it; None if it has none."""
    if not task.callback_url:  # no row can exist: spare the query
        return None
    latest = TaskCallback.objects.filter(task_id=task.id).order_by("-created_at", "-id").first()
    if latest is None:
        return None
    return {
        "event": latest.event,
        "state": latest.state.value,
        "attempts": latest.attempts,
        "last_error": latest.last_error,
        "last_status_code": latest.last_status_code,
        "delivered_at": latest.delivered_at,
    }
