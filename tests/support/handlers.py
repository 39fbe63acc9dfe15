"""Task types for tests only. Loaded by tests/conftest.py in-process, and through
TASKFLOW_HANDLER_MODULES=tests.support.handlers by the worker processes the tests start."""

import os
import signal
import time
from typing import Any

from django.db import connection
from rest_framework import serializers

from apps.handlers.context import TaskContext
from apps.handlers.errors import PermanentError, RetryableError
from apps.handlers.registry import AnyPayload, handler


class FlakyPayload(serializers.Serializer):
    fail_times = serializers.IntegerField(min_value=0)
    retry_after = serializers.FloatField(required=False, allow_null=True, default=None)


@handler("test_flaky", payload=FlakyPayload)
def flaky(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Fails with a retryable error on its first `fail_times` attempts, then succeeds."""
    if ctx.attempt <= payload["fail_times"]:
        raise RetryableError(
            f"planned failure {ctx.attempt} of {payload['fail_times']}",
            retry_after=payload.get("retry_after"),
        )
    return {"succeeded_on_attempt": ctx.attempt}


@handler("test_permanent", payload=AnyPayload)
def permanent(ctx: TaskContext, payload: dict[str, Any]) -> None:
    raise PermanentError("this input can never work")


@handler("test_crash", payload=AnyPayload)
def crash(ctx: TaskContext, payload: dict[str, Any]) -> None:
    """Kills its own worker process, every time (a poison message)."""
    os.kill(os.getpid(), signal.SIGKILL)


class SleepPayload(serializers.Serializer):
    seconds = serializers.FloatField(min_value=0, max_value=120)
    marker = serializers.CharField(required=False, default="")


@handler("test_sleep", payload=SleepPayload)
def sleep(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Sleeps in small steps, cancellable; appends a line to a marker file when it starts."""
    if payload["marker"]:
        with open(payload["marker"], "a") as marker:
            marker.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    deadline = time.monotonic() + payload["seconds"]
    while time.monotonic() < deadline:
        ctx.raise_if_cancelled()
        time.sleep(0.05)
    return {"slept": payload["seconds"]}


@handler("test_bad_result", payload=AnyPayload)
def bad_result(ctx: TaskContext, payload: dict[str, Any]) -> Any:
    return {"not json": object()}


class RecordPayload(serializers.Serializer):
    seconds = serializers.FloatField(min_value=0, max_value=30)
    marker = serializers.CharField()


@handler("test_limited", payload=RecordPayload, max_retries=0)
def limited(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    """For the cluster-wide limit tests: works `seconds`, then appends one line to `marker`:
    task id, start and end (epoch seconds) and the process id."""
    started = time.time()
    deadline = time.monotonic() + payload["seconds"]
    while time.monotonic() < deadline:
        time.sleep(0.02)
    ended = time.time()
    with open(payload["marker"], "a") as marker:  # one short append: not interleaved
        marker.write(f"{ctx.task_id} {started:.6f} {ended:.6f} {os.getpid()}\n")
    return {"started": started, "ended": ended}


@handler("test_batched", payload=AnyPayload, time_limit_seconds=20, batch_size=4, max_retries=2)
def batched(ctx: TaskContext, payload: dict[str, Any]) -> Any:
    """A type that runs in batches (4 to a message). Its payload says what to do: `fail`
    ("permanent", or "retryable" on the first `times` attempts), `nan` (a result jsonb refuses),
    `crash_marker` (kill its own process the first time, when that file does not exist yet),
    `sleep` (seconds); otherwise it returns its payload."""
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    marker = payload.get("crash_marker")
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    if payload.get("fail") == "permanent":
        raise PermanentError("this input can never work")
    if payload.get("fail") == "retryable" and ctx.attempt <= int(payload.get("times", 1)):
        raise RetryableError(f"planned failure {ctx.attempt}", retry_after=0)
    if payload.get("nan"):
        return {"value": float("nan")}
    return payload


@handler(
    "test_batched_short", payload=AnyPayload, time_limit_seconds=2, batch_size=4, max_retries=1
)
def batched_short(ctx: TaskContext, payload: dict[str, Any]) -> Any:
    """A batched type (4 to a message) with a short time limit (2 s a task). Appends
    "task_id attempt pid" to the payload's `marker` file when it starts; then `sleep` (seconds:
    past the limit, it hangs), `crash_marker` (kill its own process the first time, when that
    file does not exist yet), `exit` (raise SystemExit, which no handler's ending catches),
    `pg_sleep` (seconds in one database query: past the limit, it hangs there);
    otherwise it returns its payload."""
    if payload.get("marker"):
        with open(payload["marker"], "a") as marker:  # one short append: not interleaved
            marker.write(f"{ctx.task_id} {ctx.attempt} {os.getpid()}\n")
    if payload.get("sleep"):
        time.sleep(float(payload["sleep"]))
    if payload.get("pg_sleep"):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_sleep(%s)", [float(payload["pg_sleep"])])
    crash = payload.get("crash_marker")
    if crash and not os.path.exists(crash):
        open(crash, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    if payload.get("exit"):
        raise SystemExit(payload["exit"])
    return payload
