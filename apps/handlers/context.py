"""What a running handler gets to see and do."""

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from apps.handlers.errors import PermanentError, TaskCancelled

if TYPE_CHECKING:
    from apps.files.models import UserFile


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

    # --- The owner's files (apps.files): handlers never see a path ------------------------------

    def file(self, file_id: str) -> "UserFile":
        """The owner's file; a PermanentError if it is gone (deleted since the task was created)."""
        from apps.core.exceptions import ApplicationError
        from apps.files.selectors import file_resolve

        try:
            return file_resolve(owner_id=self.owner_id, ref=file_id)
        except ApplicationError as exc:
            raise PermanentError(
                f"{exc.message} (was it deleted after the task was created?)"
            ) from exc

    def open_file(self, file_id: str) -> IO[bytes]:
        """The bytes of the owner's file, to read and close (`with ctx.open_file(id) as f`)."""
        from apps.files.services import file_open

        return file_open(self.file(file_id))

    def saved_file(self, key: str) -> "UserFile | None":
        """The output `key` an earlier attempt of this task already saved, if any."""
        from apps.files.models import UserFile

        task_id = uuid.UUID(self.task_id)
        return UserFile.objects.filter(source_task_id=task_id, source_key=key).first()

    def save_file(
        self, name: str, content: IO[bytes] | bytes, content_type: str = "", *, key: str = ""
    ) -> "UserFile":
        """Store an output as a new file of the owner, linked to this task.

        With a `key`, saving the same output again (a retried attempt) returns the first copy.
        """
        from apps.files.services import file_create

        return file_create(
            owner_id=self.owner_id,
            name=name,
            content=content,
            content_type=content_type,
            source_task_id=uuid.UUID(self.task_id),
            source_key=key,
        )
