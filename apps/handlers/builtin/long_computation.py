"""`long_computation` (seed 001): works `duration` seconds, reports progress, stops on cancel."""

import time
from typing import Any

from rest_framework import serializers

from taskflow.sdk import NumberField, TaskCancelled, TaskContext, TaskQueue, handler

MAX_DURATION_SECONDS = 600


class LongComputationPayload(serializers.Serializer):
    duration = NumberField(
        min_value=0,
        max_value=MAX_DURATION_SECONDS,
        help_text=f"Seconds of work, 0..{MAX_DURATION_SECONDS}.",
    )


@handler(
    "long_computation",
    payload=LongComputationPayload,
    queue=TaskQueue.IO,
    time_limit_seconds=MAX_DURATION_SECONDS + 60,
    description="Simulates a long I/O-bound job of `duration` seconds, with progress and cancel.",
)
def long_computation(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    duration = float(payload["duration"])
    started = time.monotonic()
    deadline = started + duration
    step = 0.25
    last_reported = -1
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if ctx.cancelled():
            raise TaskCancelled(f"Cancelled after {now - started:.1f}s of {duration:g}s.")
        percent = int(100 * (now - started) / duration) if duration else 100
        if percent // 5 != last_reported // 5:  # every 5 % is plenty
            ctx.progress(percent, f"{now - started:.0f}s of {duration:g}s")
            last_reported = percent
        time.sleep(min(step, deadline - now))
    ctx.progress(100, "done")
    duration_out: float | int = int(duration) if duration == int(duration) else duration
    return {"message": "Long computation completed successfully", "duration": duration_out}
