"""`echo`: returns its payload. Useful to check the pipeline end to end."""

from typing import Any

from taskflow.sdk import AnyPayload, TaskContext, handler


@handler("echo", payload=AnyPayload, description="Returns its payload as the result.")
def echo(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    return payload
