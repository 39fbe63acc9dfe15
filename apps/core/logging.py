"""JSON log lines for production (LOG_FORMAT=json), the context every line carries, and no
credentials in any line."""

import json
import logging
import re
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
            line["exc_info"] = record.exc_text or self.formatException(record.exc_info)
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


# --- Credentials out of every line -------------------------------------------------------------

# user:password@ in a URL (a URL a user gave a task, as httpx logs its requests); an
# Authorization header's credentials; a JWT anywhere.
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^@/?#\s]+@")
_AUTH_CREDENTIALS = re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/-]+=*")
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    text = _URL_PASSWORD.sub(rf"\1:{REDACTED}@", text)
    text = _AUTH_CREDENTIALS.sub(rf"\1 {REDACTED}", text)
    return _JWT.sub(REDACTED, text)


class RedactFilter(logging.Filter):
    """Takes passwords in URLs, Authorization credentials and JWTs out of the message and the
    traceback of every record, whichever library logged it."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


class OneLineFailOpenFilter(logging.Filter):
    """For django-redis's "Exception ignored" records (the cache fails open while Redis is down):
    one WARNING line naming the error instead of a traceback per request."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            record.msg = "Redis unavailable, going on without the cache: %s: %s"
            record.args = (type(error).__name__, error)
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
