"""`echo`: returns its payload. Useful to check the pipeline end to end."""

from typing import Any

from taskflow.sdk import AnyPayload, TaskContext, handler


@handler(
    "echo",
    payload=AnyPayload,
    description="Returns its payload as the result.",
    # Instant: tasks published together run several to a message (docs/handlers.md).
    time_limit_seconds=30,
    batch_size=16,
)
def echo(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    return payload
