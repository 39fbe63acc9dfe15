"""The API against its own OpenAPI schema (drf-spectacular's), with schemathesis: generated
requests to every operation, a bounded number each, logged in. No answer is a 500, and every
answer the schema documents matches it.

The requests go through the whole Django stack in this process (the WSGI application), inside
the test's transaction.
"""

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Permission
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework_simplejwt.tokens import RefreshToken
from schemathesis import checks

from apps.accounts.models import User
from apps.tasks.models import Task
from taskflow.wsgi import application
from tests.security.support import PASSWORD
from tests.support.files import make_file
from tests.tasks.factories import create_task

MAX_EXAMPLES = 10

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = application


@pytest.fixture
def wsgi_in_test_transaction() -> Iterator[None]:
    """Requests share the test's database connection (and transaction), as Django's test client
    arranges: Django would otherwise close it at the end of each request."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def bearer(db: Any, rates: Any, wsgi_in_test_transaction: None) -> dict[str, str]:
    """A logged-in user with a task and a file; the rate limits out of the way (every example
    is a request)."""
    rates(user="", login_account="", login_address="", register_address="", password_change="")
    user = User.objects.create_user(email="fuzz@example.com", password=PASSWORD)
    create_task(user, payload={"n": 1})
    make_file(user)
    return {"Authorization": f"Bearer {RefreshToken.for_user(user).access_token}"}


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_no_500_and_answers_match_the_schema(case: Any, bearer: dict[str, str]) -> None:
    response = case.call(headers=bearer)
    case.validate_response(
        response, checks=[checks.not_a_server_error, checks.response_schema_conformance]
    )


# --- Real answers (the fuzzer mostly meets 400s and 404s: random ids, random task types) ------


def call(path: str, method: str, headers: dict[str, str], expect: int, **case: Any) -> Any:
    """One request through schemathesis with the data given, validated like the fuzzer's."""
    if "body" in case:
        case.setdefault("media_type", "application/json")
    response = schema[path][method].Case(**case).call(headers=headers)
    assert response.status_code == expect, (method, path, response.content[:500])
    schema[path][method].Case(**case).validate_response(
        response, checks=[checks.not_a_server_error, checks.response_schema_conformance]
    )
    content_type = response.headers.get("content-type", [""])[0]
    return response.json() if response.content and "json" in content_type else None


@pytest.fixture
def staff_bearer(bearer: dict[str, str]) -> dict[str, str]:
    staff = User.objects.create_user(email="staff@example.com", password=PASSWORD, is_staff=True)
    staff.user_permissions.add(Permission.objects.get(codename="change_task"))  # to retry
    return {"Authorization": f"Bearer {RefreshToken.for_user(staff).access_token}"}


def test_real_answers_of_every_operation_match_the_schema(bearer, staff_bearer):
    tasks, files = "/api/tasks/", "/api/files/"
    created = call(tasks, "POST", bearer, 201, body={"type": "echo", "payload": {"m": "hi"}})
    task = {"task_id": created["id"]}
    call(tasks, "GET", bearer, 200, query={"status": ["queued"], "page_size": 1})
    call("/api/tasks/{task_id}/", "GET", bearer, 200, path_parameters=task)
    call("/api/tasks/{task_id}/result/", "GET", bearer, 200, path_parameters=task)
    call(
        "/api/tasks/{task_id}/",
        "PATCH",
        bearer,
        200,
        path_parameters=task,
        body={"payload": {"m": "changed"}},
    )
    call("/api/tasks/{task_id}/cancel/", "POST", bearer, 200, path_parameters=task)
    call("/api/tasks/{task_id}/retry/", "POST", bearer, 200, path_parameters=task)
    call("/api/tasks/{task_id}/cancel/", "POST", bearer, 200, path_parameters=task)
    call("/api/tasks/{task_id}/", "DELETE", bearer, 204, path_parameters=task)
    call("/api/tasks/bulk/", "POST", bearer, 201, body={"tasks": [{"type": "echo"}]})
    call("/api/task-types/", "GET", bearer, 200)

    schedules = "/api/schedules/"
    made = call(
        schedules,
        "POST",
        bearer,
        201,
        body={"name": "nightly", "type": "echo", "cron": "0 3 * * *", "timezone": "Europe/Paris"},
    )
    schedule = {"schedule_id": made["id"]}
    call(schedules, "GET", bearer, 200, query={"page_size": 1})
    call("/api/schedules/{schedule_id}/", "GET", bearer, 200, path_parameters=schedule)
    call(
        "/api/schedules/{schedule_id}/",
        "PATCH",
        bearer,
        200,
        path_parameters=schedule,
        body={"every_seconds": 3600, "enabled": False},
    )
    call("/api/schedules/{schedule_id}/run/", "POST", bearer, 201, path_parameters=schedule)
    call("/api/schedules/{schedule_id}/", "DELETE", bearer, 204, path_parameters=schedule)
    call("/api/stats/", "GET", bearer, 200)
    call("/api/me", "GET", bearer, 200)

    uploaded = call(
        files,
        "POST",
        bearer,
        201,
        body={"file": b"hello", "name": "hello.txt"},
        media_type="multipart/form-data",
    )
    file = {"file_id": uploaded["id"]}
    call(files, "GET", bearer, 200)
    call("/api/files/{file_id}/", "GET", bearer, 200, path_parameters=file)
    call("/api/files/{file_id}/download/", "GET", bearer, 200, path_parameters=file)
    call("/api/files/{file_id}/", "DELETE", bearer, 204, path_parameters=file)

    other = create_task(User.objects.get(email="fuzz@example.com"))
    Task.objects.filter(id=other.id).update(status="failed")
    staff_task = {"task_id": str(other.id)}
    call("/api/monitoring/tasks/{task_id}/", "GET", staff_bearer, 200, path_parameters=staff_task)
    call(
        "/api/monitoring/tasks/{task_id}/retry/",
        "POST",
        staff_bearer,
        200,
        path_parameters=staff_task,
    )

    anon: dict[str, str] = {}
    login = {"email": "fuzz@example.com", "password": PASSWORD}
    call(
        "/api/register", "POST", anon, 201, body={"email": "new@example.com", "password": PASSWORD}
    )
    tokens = call("/api/login", "POST", anon, 200, body=login)
    rotated = call("/api/token/refresh", "POST", anon, 200, body={"refresh": tokens["refresh"]})
    assert set(rotated) == {"access", "refresh"}
    call("/api/logout", "POST", anon, 205, body={"refresh": rotated["refresh"]})
    fresh = {
        "Authorization": f"Bearer {call('/api/login', 'POST', anon, 200, body=login)['access']}"
    }
    change = {"current_password": PASSWORD, "new_password": "a-brand-new-password-4711"}
    pair = call("/api/password", "POST", fresh, 200, body=change)
    assert set(pair) == {"access", "refresh"}
    call("/api/logout/all", "POST", {"Authorization": f"Bearer {pair['access']}"}, 205)
    call("/health/", "GET", anon, 200)
