"""Oversized and malformed input: a clear 413 or 400 in our error shape, never a 500.

Regressions for what went through to PostgreSQL or the stack and came back a 500: NUL characters
and lone surrogates in JSON, deeply nested JSON, NaN through a form, control characters in the
Idempotency-Key header.
"""

import json
from typing import Any
from urllib.parse import urlencode

import pytest
from rest_framework.test import APIClient

from apps.core.exceptions import ApplicationError
from apps.tasks import services
from apps.tasks.models import Task
from tests.security.support import PASSWORD, assert_error
from tests.tasks.factories import create_task

NESTED = "[" * 5000 + "]" * 5000


@pytest.fixture
def quiet_client(api: APIClient) -> APIClient:
    api.raise_request_exception = False  # a 500 shows as a 500, to assert on
    return api


def post_raw(client: APIClient, path: str, body: str, method: str = "post") -> Any:
    return getattr(client, method)(path, body, content_type="application/json")


# --- Sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/register"),
        ("post", "/api/login"),
        ("post", "/api/token/refresh"),
        ("post", "/api/logout"),
        ("post", "/api/tasks"),
        ("post", "/api/tasks/bulk"),
        ("patch", "/api/tasks/{task}"),
    ],
)
def test_a_body_over_djangos_limit_is_413_on_every_json_endpoint(
    quiet_client, user, settings, method, path
):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    path = path.format(task=create_task(user).id)
    body = json.dumps({"email": "x" * 20_000, "payload": {}, "tasks": [], "refresh": "x"})
    response = post_raw(quiet_client, path, body, method)
    assert_error(response, 413, "payload_too_large")


def test_a_payload_over_max_payload_bytes_is_413_on_change_too(api, user, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_PAYLOAD_BYTES": 100}
    task = create_task(user, run_at=None)
    response = api.patch(f"/api/tasks/{task.id}", {"payload": {"a": "x" * 200}}, format="json")
    assert_error(response, 413, "payload_too_large", fields=("payload",))
    response = api.post(
        "/api/tasks/bulk",
        {"tasks": [{"type": "echo"}, {"type": "echo", "payload": {"a": "x" * 200}}]},
        format="json",
    )
    assert_error(response, 400, "validation_error", fields=("tasks[1].payload",))
    assert Task.objects.count() == 1


def test_a_bulk_create_over_bulk_max_tasks_is_400(api, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "BULK_MAX_TASKS": 5}
    response = api.post("/api/tasks/bulk", {"tasks": [{"type": "echo"}] * 6}, format="json")
    assert_error(response, 400, "validation_error", fields=("tasks",))
    assert not Task.objects.exists()


@pytest.mark.parametrize("path", ["/api/tasks", "/api/files"])
@pytest.mark.parametrize(
    "page_size", ["100000", "201", "-1", "0", "abc", "1e9", "99999999999999999999"]
)
def test_a_page_size_outside_1_to_200_is_a_400_never_a_500(quiet_client, user, path, page_size):
    """Outside 1..200 a 400 on page_size (it was the default of 50, or 200 rows)."""
    response = quiet_client.get(f"{path}?page_size={page_size}")
    assert_error(response, 400, "validation_error", ("page_size",))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "e" * 101, "payload": {}}, "type"),
        ({"type": "echo", "payload": {}, "max_retries": 2**70}, "max_retries"),
    ],
)
def test_overlong_task_fields_are_400(api, body, field):
    assert_error(api.post("/api/tasks", body, format="json"), 400, "validation_error", (field,))


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "a" * 250 + "@example.com", "password": PASSWORD}, "email"),
        ({"email": "carol@example.com", "password": "p" * 129}, "password"),
    ],
)
def test_overlong_account_fields_are_400(body, field):
    response = APIClient().post("/api/register", body, format="json")
    assert_error(response, 400, "validation_error", (field,))


def test_an_overlong_or_unprintable_idempotency_key_is_400(quiet_client):
    """Regression: a NUL in the header reached PostgreSQL: a 500."""
    for key in ("k" * 201, "a\x00b", "tab\there", "new\nline"):
        response = quiet_client.post(
            "/api/tasks", {"type": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY=key
        )
        assert_error(response, 400, "validation_error", ("Idempotency-Key",))
    assert not Task.objects.exists()


@pytest.mark.parametrize("form", ["urlencoded", "multipart", "query-string"])
def test_too_many_form_fields_is_400_naming_the_limit(quiet_client, settings, form):
    """Regression: a 500 first, then Django's generic 400 "Bad request." (handler400)."""
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 10
    fields = {f"f{n}": "x" for n in range(50)}
    if form == "urlencoded":
        response = quiet_client.post(
            "/api/tasks", urlencode(fields), content_type="application/x-www-form-urlencoded"
        )
    elif form == "multipart":
        response = quiet_client.post("/api/tasks", fields, format="multipart")
    else:
        response = quiet_client.get(f"/api/tasks?{urlencode(fields)}")
    error = assert_error(response, 400, "malformed_request")
    assert "more than 10 fields" in error["message"], error


def test_more_form_fields_than_djangos_default_is_400_naming_the_limit(quiet_client):
    body = "&".join(f"f{n}=1" for n in range(1001))
    response = quiet_client.post(
        "/api/tasks", body, content_type="application/x-www-form-urlencoded"
    )
    error = assert_error(response, 400, "malformed_request")
    assert "more than 1000 fields" in error["message"], error


def test_too_many_files_in_one_upload_is_400_naming_the_limit(quiet_client, settings):
    from django.core.files.uploadedfile import SimpleUploadedFile

    settings.DATA_UPLOAD_MAX_NUMBER_FILES = 2
    files = {f"file{n}": SimpleUploadedFile(f"f{n}.txt", b"x") for n in range(5)}
    response = quiet_client.post("/api/files", files, format="multipart")
    error = assert_error(response, 400, "malformed_request")
    assert "more than 2 files" in error["message"], error


# --- What the database or the stack cannot take -----------------------------------------------


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"type": "echo", "payload": {"a": "x\\u0000y"}}', "payload.a"),
        ('{"type": "echo", "payload": {"a\\u0000": 1}}', "payload"),
        ('{"type": "echo", "payload": {"a": ["ok", "\\ud800"]}}', "payload.a[1]"),
        ('{"type": "echo", "payload": {"a": ' + NESTED + "}}", "nested"),
        ('{"type": "echo", "payload": ' + "[" * 150 + "]" * 150 + "}", "nested"),
        ('{"type": "echo\\u0000", "payload": {}}', "type"),
        ('{"type": "echo", "payload": {"a": {"b": 1e999}}}', "payload.a.b"),
    ],
    ids=["nul-value", "nul-key", "lone-surrogate", "deep-5000", "deep-150", "nul-type", "inf"],
)
def test_unstorable_json_is_400_naming_where(quiet_client, body, where):
    """Regression: each of these was a 500 (PostgreSQL refused the NUL, the surrogate and the
    Infinity that 1e999 becomes; the JSON parser ran out of stack on the nesting)."""
    response = post_raw(quiet_client, "/api/tasks", body)
    error = assert_error(response, 400, "malformed_request")
    assert where in error["message"], error
    assert not Task.objects.exists()


def test_unstorable_json_is_400_in_bulk_and_change_too(quiet_client, user):
    response = post_raw(
        quiet_client,
        "/api/tasks/bulk",
        '{"tasks": [{"type": "echo", "payload": {"a": "\\u0000"}}]}',
    )
    assert "tasks[0].payload.a" in assert_error(response, 400, "malformed_request")["message"]
    task = create_task(user)
    response = post_raw(
        quiet_client, f"/api/tasks/{task.id}", '{"payload": {"a": "\\u0000"}}', method="patch"
    )
    assert_error(response, 400, "malformed_request")
    assert Task.objects.get(id=task.id).payload == {}


def test_a_number_that_overflows_is_400_in_bulk_and_change_too(quiet_client, user):
    response = post_raw(
        quiet_client, "/api/tasks/bulk", '{"tasks": [{"type": "echo", "payload": {"a": 1e999}}]}'
    )
    assert "tasks[0].payload.a" in assert_error(response, 400, "malformed_request")["message"]
    task = create_task(user)
    response = post_raw(
        quiet_client, f"/api/tasks/{task.id}", '{"payload": {"a": -1e999}}', method="patch"
    )
    assert "payload.a" in assert_error(response, 400, "malformed_request")["message"]
    assert Task.objects.get(id=task.id).payload == {}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"a": "x\\u0000"}', "NUL"),
        ('{"a": NaN}', "valid JSON"),
        ('{"a": Infinity}', "valid JSON"),
        ('{"a": 1e999}', "out of range"),
        ('{"a": 1, "a": 2}', "duplicate key 'a'"),
        (NESTED, "levels deep"),
        ("{not json", "valid JSON"),
    ],
    ids=["nul", "nan", "infinity", "overflow", "duplicate-key", "deep", "not-json"],
)
def test_a_payload_sent_as_a_form_field_is_checked_the_same(quiet_client, payload, message):
    """Regression: DRF's JSONField parses a form field leniently (NaN, Infinity) and without a
    depth limit; each of these was a 500 (but the duplicate key: its last value was kept)."""
    response = quiet_client.post(
        "/api/tasks", {"type": "echo", "payload": payload}, format="multipart"
    )
    error = assert_error(response, 400, "validation_error", ("payload",))
    assert message in " ".join(error["fields"]["payload"]), error
    assert not Task.objects.exists()


def test_the_service_refuses_an_unstorable_payload_from_any_caller(user):
    with pytest.raises(ApplicationError) as raised:
        services.task_create(owner=user, type="echo", payload={"note": "a\x00b"})
    assert raised.value.fields == {"payload.note": [raised.value.fields["payload.note"][0]]}
    assert raised.value.status_code == 400
    assert not Task.objects.exists()


@pytest.mark.parametrize("number", [float("inf"), float("-inf"), float("nan")])
def test_the_service_refuses_nan_and_infinity_from_any_caller(user, number):
    """jsonb refuses them: a caller that bypasses the JSON parser got a DataError (a 500)."""
    with pytest.raises(ApplicationError) as raised:
        services.task_create(owner=user, type="echo", payload={"x": [number]})
    assert set(raised.value.fields) == {"payload.x[0]"}
    assert raised.value.status_code == 400
    task = create_task(user)
    with pytest.raises(ApplicationError):
        services.task_update(task=task, actor=user, payload={"x": number})
    assert not Task.objects.exclude(id=task.id).exists()


@pytest.mark.parametrize("number", [float("inf"), float("nan")])
def test_the_payload_size_check_refuses_what_is_not_json(number):
    """The size check measured json.dumps' "Infinity" and let it through to the INSERT."""
    with pytest.raises(ApplicationError) as raised:
        services._check_payload_size({"x": number})
    assert raised.value.status_code == 400
    assert raised.value.fields == {"payload": ["Value must be valid JSON."]}
