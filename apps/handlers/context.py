"""What a running handler gets to see and do."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from apps.handlers.errors import TaskCancelled


class TaskLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg,unused-ignore]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        return f"[task {extra.get('task_id')} attempt {extra.get('attempt')}] {msg}", kwargs


@dataclass
class TaskContext:
    task_id: str
    task_type: str
    attempt: int
    owner_id: int
    report_progress: Callable[[int, str], None] = field(repr=False)
    read_cancel_requested: Callable[[], bool] = field(repr=False)
    # How often `cancelled()` asks the database at most, so that tight loops stay cheap.
    cancel_poll_seconds: float = 0.5
    _cancel_seen: bool = field(default=False, repr=False)
    _cancel_checked_at: float = field(default=0.0, repr=False)

    @property
    def logger(self) -> logging.LoggerAdapter:  # type: ignore[type-arg,unused-ignore]
        return TaskLoggerAdapter(
            logging.getLogger(f"taskflow.handlers.{self.task_type}"),
            {"task_id": self.task_id, "task_type": self.task_type, "attempt": self.attempt},
        )

    def progress(self, percent: float, message: str = "") -> None:
        """Record progress (0..100) and a short message, visible in the API and admin."""
        self.report_progress(max(0, min(100, int(percent))), message[:200])

    def cancelled(self) -> bool:
        """True once someone asked to cancel this task; handlers should stop soon after."""
        if self._cancel_seen:
            return True
        now = time.monotonic()
        if now - self._cancel_checked_at >= self.cancel_poll_seconds:
            self._cancel_checked_at = now
            self._cancel_seen = self.read_cancel_requested()
        return self._cancel_seen

    def raise_if_cancelled(self) -> None:
        if self.cancelled():
            raise TaskCancelled("Cancelled on request.")
