"""The registry of task types: name, payload schema, queue, retry policy and the function to run.

A task type is one module: a payload serializer and a function decorated with `@handler(...)`.
"""

import importlib
import logging
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

    def is_retryable(self, exc: BaseException) -> bool:
        return isinstance(exc, (RetryableError, *self.retry_on))


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
) -> Callable[[HandlerFunc], HandlerFunc]:
    """Register the decorated function as the handler of task type `name`."""

    def register(func: HandlerFunc) -> HandlerFunc:
        spec = TaskTypeSpec(
            name=name,
            run=func,
            payload_serializer=payload,
            queue=queue,
            max_retries=max_retries,
            time_limit_seconds=time_limit_seconds,
            retry_on=retry_on,
            description=description or (func.__doc__ or "").strip(),
        )
        existing = _registry.get(name)
        if existing is not None and existing.run is not func:
            logger.warning("Task type %r registered twice; the later one wins", name)
        _registry[name] = spec
        return func

    return register


def get_task_type(name: str) -> TaskTypeSpec | None:
    return _registry.get(name)


def task_types() -> list[TaskTypeSpec]:
    return sorted(_registry.values(), key=lambda spec: spec.name)


def require_task_type(name: str) -> TaskTypeSpec:
    spec = _registry.get(name)
    if spec is None:
        valid = ", ".join(sorted(_registry))
        raise ApplicationError(
            f"Unknown task type {name!r}. Valid types: {valid}.",
            code="unknown_task_type",
            fields={"type": [f"Unknown task type {name!r}. Valid types: {valid}."]},
            extra={"valid_types": sorted(_registry)},
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
