"""The effective task types: the code registry with the admin's overrides, and the webhook types.

Every task creation and every claim looks its type up, so the answer is cached in process memory
for CACHE_SECONDS: one query of the (small) task type table per process per CACHE_SECONDS, none
per task. A save in the admin clears the cache of the process that saved it at once; other
processes (gunicorn workers, Celery workers) see the change within CACHE_SECONDS.

The cache is also cleared when a setting changes (tests), and when code registers a type.
"""

import dataclasses
import logging
import threading
import time
from typing import Any

from django.core.signals import setting_changed
from django.db import DatabaseError, InterfaceError, OperationalError, ProgrammingError
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from apps.handlers.models import RATE_PERIOD_SECONDS, TaskType, TaskTypeKind
from apps.handlers.registry import RateLimit, TaskTypeSpec, code_task_types
from apps.tasks.queues import TaskQueue

logger = logging.getLogger(__name__)

CACHE_SECONDS = 3.0
# After a failed read of the table, the last good answer is used this long before trying again.
RETRY_AFTER_ERROR_SECONDS = 1.0

_lock = threading.Lock()
_cache: tuple[float, dict[str, TaskTypeSpec]] | None = None  # (monotonic expiry, types)


def invalidate_task_types() -> None:
    global _cache
    _cache = None


@receiver(setting_changed)
def _on_setting_changed(**kwargs: Any) -> None:
    invalidate_task_types()


@receiver(post_save, sender=TaskType)
@receiver(post_delete, sender=TaskType)
def _on_task_type_saved(**kwargs: Any) -> None:
    invalidate_task_types()


def effective_task_types() -> dict[str, TaskTypeSpec]:
    """{name: spec} for every type this process can run: code types with their overrides, and
    webhook types; enabled or not (a disabled type's queued tasks are held, not failed)."""
    cached = _cache
    if cached is not None and time.monotonic() < cached[0]:
        return cached[1]
    with _lock:
        cached = _cache
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        return _reload(previous=cached[1] if cached else None)


def _reload(*, previous: dict[str, TaskTypeSpec] | None) -> dict[str, TaskTypeSpec]:
    global _cache
    code = code_task_types()
    try:
        rows = list(TaskType.objects.all())
    except ProgrammingError:
        # No table yet (before `migrate`): the code types with their own settings.
        logger.debug("No task type table yet; using the code's settings", exc_info=True)
        rows = []
    except (OperationalError, InterfaceError, DatabaseError):
        if previous is None:
            raise  # the caller's own database error handling applies (a worker requeues)
        logger.warning("Could not read the task type table; using the last known settings")
        _cache = (time.monotonic() + RETRY_AFTER_ERROR_SECONDS, previous)
        return previous
    types = dict(code)
    for row in rows:
        if row.kind == TaskTypeKind.WEBHOOK:
            if row.name in code:
                logger.warning("Webhook type %r hides the code type of the same name", row.name)
            types[row.name] = webhook_spec(row)
        elif row.name in code:
            types[row.name] = with_overrides(code[row.name], row)
        # A code row whose code is not installed here names no type this process can run.
    _cache = (time.monotonic() + CACHE_SECONDS, types)
    return types


def _rate_limit(row: TaskType) -> RateLimit | None:
    if not row.rate_limit_count:
        return None
    return RateLimit(row.rate_limit_count, RATE_PERIOD_SECONDS[row.rate_limit_period])  # type: ignore[index]


def with_overrides(spec: TaskTypeSpec, row: TaskType) -> TaskTypeSpec:
    """The code's spec with what staff set on its row (an empty field keeps the code's value)."""
    changes: dict[str, Any] = {"enabled": row.enabled}
    if row.queue:
        changes["queue"] = TaskQueue(row.queue)
    for field, attr in (
        ("default_max_retries", "max_retries"),
        ("max_retries_limit", "max_retries_limit"),
        ("backoff_base_seconds", "backoff_base_seconds"),
        ("backoff_cap_seconds", "backoff_cap_seconds"),
        ("time_limit_seconds", "time_limit_seconds"),
        ("concurrency_limit", "concurrency_limit"),
    ):
        value = getattr(row, field)
        if value is not None:
            changes[attr] = value
    rate = _rate_limit(row)
    if rate is not None:
        changes["rate_limit"] = rate
    return dataclasses.replace(spec, **changes)


def webhook_spec(row: TaskType) -> TaskTypeSpec:
    from apps.handlers.webhooks import webhook_spec_for

    spec = webhook_spec_for(row)
    return dataclasses.replace(spec, rate_limit=_rate_limit(row))
