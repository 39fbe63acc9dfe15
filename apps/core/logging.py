"""JSON log lines for production (LOG_FORMAT=json), and the context every line carries."""

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, tz=UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


# --- Context carried into every log line (request id and user in the API; task in a worker) -----

_log_context: ContextVar[dict[str, Any]] = ContextVar("taskflow_log_context", default={})  # noqa: B039


def bind_log_context(**values: Any) -> None:
    """Add fields to every log line of the current request, task or thread from now on.

    A value may be a callable, called when a line is logged (for what is known only later).
    """
    _log_context.set({**_log_context.get(), **values})


def clear_log_context() -> None:
    _log_context.set({})


def log_context() -> dict[str, Any]:
    """The current fields, callables resolved; None values left out."""
    out = {}
    for key, value in _log_context.get().items():
        if callable(value):
            try:
                value = value()
            except Exception:  # a log line must never fail for its context
                value = None
        if value is not None:
            out[key] = value
    return out


class ContextFilter(logging.Filter):
    """Puts the bound context (request_id, user_id, task_id, task_type, attempt) on each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in log_context().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True
