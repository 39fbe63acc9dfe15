"""Request ids and the context on log lines (request_id, user_id; task_id, task_type, attempt)."""

import io
import json
import logging
from collections.abc import Iterator

import pytest

from apps.core.logging import ContextFilter, JsonFormatter, bind_log_context, clear_log_context
from apps.tasks import execution
from tests.tasks.factories import create_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """Log lines as production writes them (LOG_FORMAT=json), from every logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    previous = root.level
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        clear_log_context()


def parsed(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_a_request_gets_an_id_and_one_log_line_with_user_and_route(api, user, json_lines):
    response = api.get("/api/tasks")
    request_id = response["X-Request-ID"]
    assert len(request_id) == 32
    [line] = [entry for entry in parsed(json_lines) if entry["logger"] == "taskflow.http"]
    assert line["request_id"] == request_id
    assert line["user_id"] == user.id
    assert line["route"] == "task-list"
    assert line["status"] == 200
    assert line["method"] == "GET"
    assert line["duration_ms"] >= 0
    assert line["message"].startswith("GET /api/tasks 200 ")


def test_a_callers_request_id_is_kept_and_a_bad_one_replaced(api, anon, json_lines):
    assert api.get("/api/tasks", HTTP_X_REQUEST_ID="lb-1234.abc")["X-Request-ID"] == "lb-1234.abc"
    replaced = anon.get("/health", HTTP_X_REQUEST_ID="<script>")["X-Request-ID"]
    assert replaced != "<script>" and len(replaced) == 32
    lines = [entry for entry in parsed(json_lines) if entry["logger"] == "taskflow.http"]
    assert [line["request_id"] for line in lines] == ["lb-1234.abc", replaced]
    assert "user_id" not in lines[1]  # anonymous


def test_lines_logged_during_a_request_carry_its_id(api, json_lines):
    api.post("/api/tasks", {"type": "nope"}, format="json")
    by_logger = {entry["logger"]: entry for entry in parsed(json_lines)}
    request_id = by_logger["taskflow.http"]["request_id"]
    assert all(entry.get("request_id") == request_id for entry in parsed(json_lines))
    # Nothing leaks into what the thread logs next.
    logging.getLogger("after").info("later")
    assert "request_id" not in parsed(json_lines)[-1]


def test_worker_lines_carry_the_task_its_type_and_the_attempt(user, json_lines):
    task = create_task(user, "test_flaky", {"fail_times": 1})
    bind_log_context(celery_task_id=str(task.dispatch_id))
    execution.handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    handler_lines = [e for e in parsed(json_lines) if e["logger"].startswith("taskflow.handlers")]
    # Whatever the handler or the execution logs while the attempt runs is tagged with it.
    logging.getLogger("apps.tasks.execution").info("inside")
    last = parsed(json_lines)[-1]
    assert last["task_id"] == str(task.id)
    assert last["task_type"] == "test_flaky"
    assert last["attempt"] == 1
    assert last["celery_task_id"] == str(task.dispatch_id)
    assert all(e["task_id"] == str(task.id) for e in handler_lines)


def test_text_format_stays_readable(settings):
    formatter = logging.Formatter(settings.LOGGING["formatters"]["text"]["format"])
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "hello"})
    ContextFilter().filter(record)
    assert formatter.format(record).endswith("INFO x: hello")
