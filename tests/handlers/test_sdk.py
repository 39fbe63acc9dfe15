"""The handler SDK (taskflow.sdk), through a test plugin written with it alone
(tests/support/sdk_plugin.py) and loaded through a `taskflow.handlers` entry point."""

import ast
import importlib
import logging
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.exceptions import ValidationError

import taskflow.sdk
from apps.accounts.models import User
from apps.files.models import UserFile
from apps.files.services import file_open
from apps.handlers import registry
from apps.handlers.registry import code_task_types, load_handler_modules
from apps.tasks.execution import DeliveryOutcome, handle_delivery
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver
from tests.support.files import make_file
from tests.support.wait import wait_for

S = TaskStatus
PLUGIN = "tests.support.sdk_plugin"
BUILTIN = Path(__file__).resolve().parents[2] / "apps" / "handlers" / "builtin"


def add_distribution(path: Path, name: str, entry_points: str) -> None:
    """An installed distribution's metadata, as pip leaves it, in a directory on sys.path."""
    info = path / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[{taskflow.sdk.ENTRY_POINT_GROUP}]\n{entry_points}")


@pytest.fixture
def plugin_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The test plugin, (re)loaded by load_handler_modules through its entry point."""
    add_distribution(tmp_path, "taskflow-sdk-test-plugin", f"sdk = {PLUGIN}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(PLUGIN, None)
    load_handler_modules()
    return sys.modules[PLUGIN]


def test_a_plugins_entry_point_registers_its_types(plugin_loaded):
    types = code_task_types()
    for name in ("sdk_wait", "sdk_upper", "sdk_outcome"):
        assert types[name].run is getattr(plugin_loaded, name)  # the entry point's import


def test_a_broken_plugin_is_logged_and_the_others_still_load(
    tmp_path, monkeypatch, caplog, plugin_loaded
):
    add_distribution(tmp_path / "broken", "broken-plugin", "broken = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path / "broken"))
    with caplog.at_level(logging.ERROR, logger="apps.handlers.registry"):
        load_handler_modules()
    assert "Could not load task handler plugin broken" in caplog.text
    assert "sdk_wait" in code_task_types()


def test_the_decorators_settings_reach_the_api_and_task_creation(plugin_loaded, api, user):
    listed = {t["name"]: t for t in api.get("/api/task-types").json()}
    assert {k: v for k, v in listed["sdk_wait"].items() if k != "payload_schema"} == {
        "name": "sdk_wait",
        "kind": "code",
        "description": "Reports progress, logs, and waits for a file or a cancel request.",
        "queue": "io",
        "default_max_retries": 5,
        "max_retries_limit": 7,
        "time_limit_seconds": 42,
        "rate_limit": {"count": 10, "period": "minute"},
        "concurrency_limit": 3,
    }
    assert listed["sdk_wait"]["payload_schema"]["required"] == ["release_file"]

    too_many = api.post(
        "/api/tasks",
        {"type": "sdk_wait", "payload": {"release_file": "x"}, "max_retries": 8},
        format="json",
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["fields"] == {
        "max_retries": ["Ensure this value is between 0 and 7."]
    }
    task = create(user, "sdk_wait", {"release_file": "x"})
    assert (task.queue, task.max_retries) == ("io", 5)


@pytest.mark.django_db(transaction=True)
def test_progress_logs_and_cancel_while_the_handler_runs(
    plugin_loaded, user: User, api, tmp_path, caplog, client
):
    task = create(user, "sdk_wait", {"release_file": str(tmp_path / "never")})
    outcome: list[DeliveryOutcome] = []

    def work() -> None:
        try:
            outcome.append(
                handle_delivery(
                    task_id=str(task.id),
                    dispatch_id=str(task.dispatch_id),
                    redelivered=False,
                    worker="sdk-test",
                )
            )
        finally:
            connection.close()

    caplog.set_level(logging.INFO, logger="taskflow.handlers.sdk_wait")
    worker = threading.Thread(target=work)
    worker.start()
    try:
        running = wait_for(
            lambda: (t := api.get(f"/api/tasks/{task.id}").json())["progress"] == 40 and t,
            what="the handler's progress in the API",
        )
        assert (running["status"], running["progress_message"]) == ("running", "halfway")
        staff = User.objects.create_superuser(email="staff@example.com", password="x" * 12)
        client.force_login(staff)
        page = client.get(f"/admin/tasks/task/{task.id}/change/").content.decode()
        assert 'id="task-live-message">halfway<' in page

        assert api.post(f"/api/tasks/{task.id}/cancel").json()["cancel_requested"] is True
    finally:
        worker.join(timeout=30)
    assert outcome[0].status == S.CANCELLED
    task.refresh_from_db()
    assert (task.status, task.error) == (S.CANCELLED, "stopped on request")

    lines = [r for r in caplog.records if r.name == "taskflow.handlers.sdk_wait"]
    assert [r.getMessage() for r in lines] == [
        f"[task {task.id} attempt 1] waiting for {tmp_path / 'never'}",
        f"[task {task.id} attempt 1] cancelled",
    ]
    assert {(getattr(r, "task_id", None), getattr(r, "attempt", None)) for r in lines} == {
        (str(task.id), 1)
    }


def test_a_handler_reads_and_writes_the_owners_files(plugin_loaded, user, media_root):
    source = make_file(user, "notes.txt", b"hello world\n")
    task = create(user, "sdk_upper", {"file": "notes.txt"})  # by unique name; stored as the id
    assert task.payload == {"file": str(source.id)}

    assert deliver(task).status == S.SUCCEEDED

    assert isinstance(task.result, dict)
    saved = UserFile.objects.get(id=task.result["file"])
    assert (saved.owner_id, saved.name, saved.source_task_id) == (
        user.id,
        "upper-notes.txt",
        task.id,
    )
    with file_open(saved) as handle:
        assert handle.read() == b"HELLO WORLD\n"


def test_another_users_file_is_no_such_file(plugin_loaded, user, other_user, api):
    theirs = make_file(other_user, "secret.txt", b"theirs")
    response = api.post(
        "/api/tasks", {"type": "sdk_upper", "payload": {"file": str(theirs.id)}}, format="json"
    )
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == ["payload.file"]


def test_a_permanent_error_fails_at_once(plugin_loaded, user):
    task = create(user, "sdk_outcome", {"outcome": "permanent"}, max_retries=3)
    assert deliver(task).status == S.FAILED
    assert (task.error, task.attempts, task.retries) == ("the input is wrong for good", 1, 0)


def test_a_retryable_error_waits_with_the_types_own_backoff(plugin_loaded, user):
    # The suite's global backoff is under 0.05 s; this type's is uniform(0, 3600) s.
    task = create(user, "sdk_outcome", {"outcome": "retry"})
    before = timezone.now()
    assert deliver(task).status == S.RETRYING
    assert task.retries == 1 and task.run_at is not None
    assert before + timedelta(seconds=0.1) < task.run_at < before + timedelta(seconds=3601)


def test_retry_after_replaces_the_backoff_for_one_retry(plugin_loaded, user):
    task = create(user, "sdk_outcome", {"outcome": "retry_after"})
    before = timezone.now()
    assert deliver(task).status == S.RETRYING and task.run_at is not None
    assert before + timedelta(seconds=29) < task.run_at < before + timedelta(seconds=32)
    assert task.error == "RetryableError: busy, come back in 30 s"


def test_the_sdk_names_are_the_platforms_own():
    from apps.handlers import context, errors

    assert taskflow.sdk.handler is registry.handler
    assert taskflow.sdk.TaskContext is context.TaskContext
    assert taskflow.sdk.PermanentError is errors.PermanentError
    assert taskflow.sdk.RetryableError is errors.RetryableError
    assert taskflow.sdk.TaskCancelled is errors.TaskCancelled
    for name in taskflow.sdk.__all__:
        assert hasattr(taskflow.sdk, name), name


def test_the_sdks_number_field_takes_json_numbers_only():
    """What plugin authors get from taskflow.sdk.NumberField: strings were taken through
    float() before ("1_0" became 10.0); they are refused now, as booleans always were."""
    field = taskflow.sdk.NumberField(positive=True, max_value=100)
    assert [field.run_validation(v) for v in (1, 2.5, 100)] == [1.0, 2.5, 100.0]
    for value, message in [
        ("5", "Must be a number, not a string."),
        ("1_0", "Must be a number, not a string."),
        (True, "Must be a number."),
        (float("nan"), "Must be a finite number."),
        (10**400, "too large"),
        (0, "Must be positive"),
        (101, "less than or equal to 100"),
    ]:
        with pytest.raises(ValidationError, match=message):
            field.run_validation(value)


@pytest.mark.parametrize(
    "module", sorted(p.stem for p in BUILTIN.glob("*.py") if p.stem != "__init__")
)
def test_the_builtin_types_are_written_with_the_sdk(module: str):
    tree = ast.parse((BUILTIN / f"{module}.py").read_text())
    imported = {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "taskflow.sdk" in imported
    assert not imported & {
        "apps.handlers.registry",
        "apps.handlers.context",
        "apps.handlers.errors",
    }
    assert importlib.import_module(f"apps.handlers.builtin.{module}")


def test_a_bad_type_name_or_rate_is_refused_when_the_code_loads():
    with pytest.raises(ValueError, match="Task type name 'Bad Name'"):
        taskflow.sdk.handler("Bad Name")
    with pytest.raises(ValueError, match="Not a rate: '5 per hour'"):
        taskflow.sdk.handler("fine_name", rate_limit="5 per hour")
    with pytest.raises(ValueError, match="concurrency_limit must be at least 1"):
        taskflow.sdk.handler("fine_name", concurrency_limit=0)
    assert "fine_name" not in code_task_types()
