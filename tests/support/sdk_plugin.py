"""A test plugin written with the public SDK only (taskflow.sdk), as a third party would write one.

tests/handlers/test_sdk.py loads it through a `taskflow.handlers` entry point.
"""

import time
from pathlib import Path
from typing import Any

from rest_framework import serializers

from taskflow.sdk import (
    FileRefField,
    PermanentError,
    RetryableError,
    TaskCancelled,
    TaskContext,
    TaskQueue,
    handler,
)


class WaitPayload(serializers.Serializer):
    release_file = serializers.CharField(help_text="The handler ends once this file exists.")


@handler(
    "sdk_wait",
    payload=WaitPayload,
    queue=TaskQueue.IO,
    max_retries=5,
    max_retries_limit=7,
    time_limit_seconds=42,
    backoff_base_seconds=3600,
    backoff_cap_seconds=3600,
    rate_limit="10/min",
    concurrency_limit=3,
    description="Reports progress, logs, and waits for a file or a cancel request.",
)
def sdk_wait(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    ctx.logger.info("waiting for %s", payload["release_file"])
    ctx.progress(40, "halfway")
    release = Path(payload["release_file"])
    deadline = time.monotonic() + 60
    while not release.exists():
        if ctx.cancelled():
            ctx.logger.info("cancelled")
            raise TaskCancelled("stopped on request")
        if time.monotonic() > deadline:
            raise PermanentError("never released")
        time.sleep(0.02)
    return {"released": True, "attempt": ctx.attempt}


class UpperPayload(serializers.Serializer):
    file = FileRefField()


@handler("sdk_upper", payload=UpperPayload)
def sdk_upper(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Reads one of the owner's files and saves its text in capitals as a new file."""
    source = ctx.file(payload["file"])
    with ctx.open_file(payload["file"]) as handle:
        text = handle.read().decode()
    saved = ctx.save_file(f"upper-{source.name}", text.upper().encode(), "text/plain", key="out")
    return {"file": str(saved.id), "size": saved.size}


class OutcomePayload(serializers.Serializer):
    outcome = serializers.ChoiceField(choices=["permanent", "retry", "retry_after"])


@handler(
    "sdk_outcome",
    payload=OutcomePayload,
    backoff_base_seconds=3600,
    backoff_cap_seconds=3600,
)
def sdk_outcome(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Ends its attempt the way the payload says."""
    if payload["outcome"] == "permanent":
        raise PermanentError("the input is wrong for good")
    if payload["outcome"] == "retry_after":
        raise RetryableError("busy, come back in 30 s", retry_after=30)
    raise RetryableError("try again later")
