"""The registry of task types: name, payload schema, queue, retry policy and the function to run.

A code type is one module: a payload serializer and a function decorated with `@handler(...)`
(`taskflow.sdk.handler`). What the platform runs is the *effective* type: the code's settings
with the overrides staff made in the admin (apps.handlers.models.TaskType), plus the webhook types
created there. `get_task_type`, `require_task_type` and `task_types` answer with those, from a
cache that costs no query per task (apps.handlers.selectors).
"""

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from django.conf import settings
from rest_framework import serializers

from apps.core.exceptions import ApplicationError, flatten_detail, validation_summary
from apps.handlers.context import TaskContext
from apps.handlers.errors import RetryableError
from apps.tasks.queues import TaskQueue

logger = logging.getLogger(__name__)

BUILTIN_HANDLER_MODULES = [
    "apps.handlers.builtin.echo",
    "apps.handlers.builtin.long_computation",
    "apps.handlers.builtin.send_email",
    "apps.handlers.builtin.process_image",
    "apps.handlers.builtin.download_files",
    "apps.handlers.builtin.fetch_url",
]
ENTRY_POINT_GROUP = "taskflow.handlers"

HandlerFunc = Callable[[TaskContext, dict[str, Any]], Any]


class AnyPayload(serializers.Serializer):
    """For types that accept any JSON object."""

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["Expected a JSON object."]})
        return data


TYPE_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,99}$")
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(s|sec|second|m|min|minute)\s*$")
RATE_PERIODS = {"second": 1, "minute": 60}


@dataclass(frozen=True)
class RateLimit:
    """At most `count` tasks start per `period_seconds` (1 or 60), spaced evenly."""

    count: int
    period_seconds: int

    @classmethod
    def parse(cls, rate: str) -> "RateLimit":
        """ "5/s", "5/second", "100/min", "100/minute"."""
        match = _RATE.match(rate)
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"Not a rate: {rate!r} (expected e.g. 5/s or 100/min).")
        return cls(int(match.group(1)), 1 if match.group(2).startswith("s") else 60)

    @property
    def period_name(self) -> str:
        return "second" if self.period_seconds == 1 else "minute"

    @property
    def interval_seconds(self) -> float:
        """The spacing between two starts."""
        return self.period_seconds / self.count

    def __str__(self) -> str:
        return f"{self.count}/{'s' if self.period_seconds == 1 else 'min'}"


@dataclass(frozen=True)
class TaskTypeSpec:
    name: str
    run: HandlerFunc
    payload_serializer: type[serializers.Serializer]
    queue: TaskQueue
    max_retries: int | None
    time_limit_seconds: int | None
    retry_on: tuple[type[BaseException], ...]
    description: str
    # None: the platform's defaults (RETRY_BACKOFF_*_SECONDS, MAX_RETRIES_LIMIT).
    backoff_base_seconds: float | None = None
    backoff_cap_seconds: float | None = None
    max_retries_limit: int | None = None
    # Cluster-wide limits (apps.handlers.limits); None: no limit.
    rate_limit: RateLimit | None = None
    concurrency_limit: int | None = None
    kind: str = "code"
    enabled: bool = True
    # Up to this many of its tasks published together share one message (1: a message each).
    batch_size: int = 1

    @property
    def message_batch_size(self) -> int:
        """How many of its tasks one message may carry now: `batch_size`, for a type with a time
        limit that cannot hold its tasks (enabled, no rate or concurrency limit, which are
        checked per task), at most MESSAGE_BATCH_MAX, and few enough that the batch's time limit
        (the type's, times its tasks) stays under RabbitMQ's consumer_timeout."""
        if (
            self.batch_size < 2
            or not self.time_limit_seconds
            or not self.enabled
            or self.rate_limit is not None
            or self.concurrency_limit is not None
        ):
            return 1
        from apps.tasks.publisher import HARD_LIMIT_MARGIN_SECONDS

        consumer_timeout = settings.TASKFLOW["RABBITMQ_CONSUMER_TIMEOUT_SECONDS"]
        fits = (consumer_timeout - HARD_LIMIT_MARGIN_SECONDS - 1) // self.time_limit_seconds
        return max(1, min(self.batch_size, int(settings.TASKFLOW["MESSAGE_BATCH_MAX"]), fits))

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, (RetryableError, *self.retry_on))

    @property
    def default_max_retries(self) -> int:
        if self.max_retries is not None:
            return self.max_retries
        return int(settings.TASKFLOW["DEFAULT_MAX_RETRIES"])

    @property
    def retries_limit(self) -> int:
        """The most retries a task of this type may ask for."""
        if self.max_retries_limit is not None:
            return self.max_retries_limit
        return int(settings.TASKFLOW["MAX_RETRIES_LIMIT"])


_registry: dict[str, TaskTypeSpec] = {}


def handler(
    name: str,
    *,
    payload: type[serializers.Serializer] = AnyPayload,
    queue: TaskQueue = TaskQueue.DEFAULT,
    max_retries: int | None = None,
    time_limit_seconds: int | None = None,
    retry_on: tuple[type[BaseException], ...] = (ConnectionError, TimeoutError),
    description: str = "",
    backoff_base_seconds: float | None = None,
    backoff_cap_seconds: float | None = None,
    max_retries_limit: int | None = None,
    rate_limit: str | None = None,
    concurrency_limit: int | None = None,
    batch_size: int = 1,
) -> Callable[[HandlerFunc], HandlerFunc]:
    """Register the decorated function as the handler of task type `name`.

    payload: a DRF serializer class for the payload (checked when a task is created).
    queue: where its tasks run (TaskQueue.DEFAULT, IO or CPU).
    max_retries: the default when a task does not say (else DEFAULT_MAX_RETRIES);
    max_retries_limit: the most a task may ask for (else MAX_RETRIES_LIMIT).
    time_limit_seconds: one attempt's limit (else TASK_HARD_TIME_LIMIT_SECONDS).
    retry_on: exceptions retried besides RetryableError.
    backoff_base_seconds, backoff_cap_seconds: retry n waits uniform(0, min(cap, base * 2**(n-1))).
    rate_limit ("5/s", "100/min") and concurrency_limit: cluster-wide, across all workers.
    batch_size: for short tasks, up to this many tasks published together (a bulk create, a
    release) go in one message, which a worker claims and finishes in one statement each and
    runs one after another. Needs time_limit_seconds (the batch's limit is it times the tasks).
    Staff can override every one of these in the admin (Task types).
    """
    if not TYPE_NAME.match(name):
        raise ValueError(
            f"Task type name {name!r}: use lowercase letters, digits, _ . - (a letter first)."
        )
    parsed_rate = RateLimit.parse(rate_limit) if rate_limit else None
    if concurrency_limit is not None and concurrency_limit < 1:
        raise ValueError("concurrency_limit must be at least 1 (or None for no limit).")
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    if batch_size > 1 and not time_limit_seconds:
        raise ValueError("batch_size needs time_limit_seconds (a batch's limit is its tasks').")

    def register(func: HandlerFunc) -> HandlerFunc:
        spec = TaskTypeSpec(
            name=name,
            run=func,
            payload_serializer=payload,
            queue=TaskQueue(queue),
            max_retries=max_retries,
            time_limit_seconds=time_limit_seconds,
            retry_on=retry_on,
            description=description or (func.__doc__ or "").strip(),
            backoff_base_seconds=backoff_base_seconds,
            backoff_cap_seconds=backoff_cap_seconds,
            max_retries_limit=max_retries_limit,
            rate_limit=parsed_rate,
            concurrency_limit=concurrency_limit,
            batch_size=batch_size,
        )
        existing = _registry.get(name)
        if existing is not None and existing.run is not func:
            logger.warning("Task type %r registered twice; the later one wins", name)
        _registry[name] = spec
        _invalidate()
        return func

    return register


def _invalidate() -> None:
    from apps.handlers.selectors import invalidate_task_types

    invalidate_task_types()


def code_task_types() -> dict[str, TaskTypeSpec]:
    """The types registered in code, as the code declares them (no admin overrides)."""
    return dict(_registry)


def get_task_type(name: str) -> TaskTypeSpec | None:
    """The effective type (code with admin overrides, or a webhook type), enabled or not."""
    from apps.handlers.selectors import effective_task_types

    return effective_task_types().get(name)


def task_types(*, enabled_only: bool = False) -> list[TaskTypeSpec]:
    from apps.handlers.selectors import effective_task_types

    specs = effective_task_types().values()
    return sorted(
        (spec for spec in specs if spec.enabled or not enabled_only), key=lambda s: s.name
    )


def require_task_type(name: str) -> TaskTypeSpec:
    spec = get_task_type(name)
    if spec is None:
        valid_types = [spec.name for spec in task_types(enabled_only=True)]
        valid = ", ".join(valid_types)
        raise ApplicationError(
            f"Unknown task type {name!r}. Valid types: {valid}.",
            code="unknown_task_type",
            fields={"type": [f"Unknown task type {name!r}. Valid types: {valid}."]},
            extra={"valid_types": valid_types},
        )
    return spec


def require_enabled_task_type(name: str) -> TaskTypeSpec:
    """As require_task_type, and a 400 task_type_disabled for a type staff disabled."""
    spec = require_task_type(name)
    if not spec.enabled:
        raise ApplicationError(
            f"The task type {name!r} is disabled: it takes no new tasks for now.",
            code="task_type_disabled",
            fields={"type": [f"The task type {name!r} is disabled."]},
        )
    return spec


def validate_payload(spec: TaskTypeSpec, payload: Any, *, owner: Any = None) -> dict[str, Any]:
    """The payload as the handler will get it, or a 400 that names each bad field.

    The serializer gets the task's owner as `context["owner"]`, to check references to the
    owner's files (another user's file is "no such file").
    """
    if not isinstance(payload, dict):
        raise ApplicationError(
            "Invalid input: payload: expected a JSON object.",
            code="validation_error",
            fields={"payload": ["Expected a JSON object."]},
        )
    serializer = spec.payload_serializer(data=payload, context={"owner": owner})
    if not serializer.is_valid():
        fields = {
            ("payload" if key == "non_field_errors" else f"payload.{key}"): flatten_detail(value)
            for key, value in serializer.errors.items()
        }
        raise ApplicationError(
            f"Invalid payload for {spec.name}: {validation_summary(fields)}",
            code="validation_error",
            fields=fields,
        )
    return dict(serializer.validated_data)


def load_handler_modules() -> None:
    """Import the built-in handlers, the configured modules and the plugins' entry points."""
    for module in [*BUILTIN_HANDLER_MODULES, *settings.TASKFLOW["HANDLER_MODULES"]]:
        importlib.import_module(module)
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry_point.load()
        except Exception:
            logger.exception("Could not load task handler plugin %s", entry_point.name)
