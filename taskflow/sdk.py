"""The handler SDK: what a task type's code imports (docs/handlers.md).

    from rest_framework import serializers
    from taskflow.sdk import TaskContext, TaskQueue, handler


    class Payload(serializers.Serializer):
        text = serializers.CharField()


    @handler("word_count", payload=Payload, queue=TaskQueue.DEFAULT, max_retries=3)
    def word_count(ctx: TaskContext, payload: dict) -> dict:
        ctx.progress(50, "counting")
        return {"words": len(payload["text"].split())}

Importable in a configured Django process (the web and worker processes, and the modules they
load: built-in handlers, TASKFLOW_HANDLER_MODULES, and the `taskflow.handlers` entry points of
installed plugin packages).
"""

from apps.core.api import TextField
from apps.files.fields import FileRefField
from apps.handlers.context import TaskContext
from apps.handlers.errors import HandlerError, PermanentError, RetryableError, TaskCancelled
from apps.handlers.fields import HttpUrlField, NumberField, StrictBooleanField
from apps.handlers.registry import ENTRY_POINT_GROUP, AnyPayload, RateLimit, handler
from apps.handlers.signing import SIGNATURE_HEADER, verify
from apps.tasks.queues import TaskQueue

__all__ = [
    "ENTRY_POINT_GROUP",
    "SIGNATURE_HEADER",
    "AnyPayload",
    "FileRefField",
    "HandlerError",
    "HttpUrlField",
    "NumberField",
    "PermanentError",
    "RateLimit",
    "RetryableError",
    "StrictBooleanField",
    "TaskCancelled",
    "TaskContext",
    "TaskQueue",
    "TextField",
    "handler",
    "verify",
]
