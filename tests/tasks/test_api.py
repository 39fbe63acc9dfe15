"""Tasks API through DRF's test client: every endpoint and every error a user can hit.

Tasks reach `running`, `succeeded` and `failed` the way a worker takes them there: through
`apps.tasks.execution.handle_delivery` (or, for a task that must stay running, a worker's claim
through the transition function). Those tests use a transactional database, since a worker works
outside the test's transaction.
"""

import base64
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from django.db import connection
from django.utils import timezone
from rest_framework.pagination import CursorPagination
from rest_framework.request import Request
from rest_framework.test import APIClient, APIRequestFactory
from rest_framework_simplejwt.tokens import RefreshToken

from apps.tasks import services
from apps.tasks.api import TaskCursorPagination
from apps.tasks.execution import DeliveryOutcome, handle_delivery
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import AttemptStart, Sql, transition_one
from tests.bench import scale
from tests.support.wait import wait_for

S = TaskStatus
RESULT_KEYS = {"task_id", "status", "result", "error", "created_at", "started_at", "ended_at"}


# --- Helpers ---------------------------------------------------------------------------------


def assert_error(response: Any, status: int, code: str, fields: tuple[str, ...] = ()) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"code", "message", "fields"} <= set(error), error
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    for field in fields:
        assert field in error["fields"], error
    return error


def create(api: APIClient, expect: int = 201, **body: Any) -> dict[str, Any]:
    response = api.post("/api/tasks", body, format="json")
    assert response.status_code == expect, response.content
    return response.json()


def future(**delta: float) -> str:
    return (timezone.now() + timedelta(**(delta or {"hours": 1}))).isoformat()


def deliver(task_id: str) -> DeliveryOutcome:
    """What a worker does with the task's current message."""
    task = Task.objects.get(id=task_id)
    assert task.dispatch_id is not None, task.status
    return handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="test"
    )


def claim(task_id: str) -> Task:
    """A worker's claim of a queued task, leaving it running (its handler never returns)."""
    task = Task.objects.get(id=task_id)
    moved = transition_one(
        task_id=task.id,
        to=S.RUNNING,
        allowed_from={S.QUEUED},
        where="AND t.dispatch_id = %s",
        where_params=(str(task.dispatch_id),),
        changes={"attempts": Sql("t.attempts + 1"), "started_at": Sql("now()")},
        attempt=AttemptStart(worker="test"),
        note="claimed by test",
    )
    assert moved is not None
    return moved.task


def status_of(task_id: str) -> str:
    return Task.objects.values_list("status", flat=True).get(id=task_id)


def history(api: APIClient, task_id: str) -> list[str]:
    return [h["to_status"] for h in api.get(f"/api/tasks/{task_id}").json()["history"]]


# --- Create ----------------------------------------------------------------------------------


def test_create_queues_the_task(api, user):
    response = api.post("/api/tasks", {"type": "echo", "payload": {"a": 1}}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["type"] == "echo"
    assert body["status"] == "queued"
    assert body["payload"] == {"a": 1}
    assert body["max_retries"] == 3
    assert body["retries"] == 0
    assert body["attempt_count"] == 0
    assert body["run_at"] is None
    assert body["cancel_requested"] is False
    assert body["queue"] == "default"
    assert response["Location"] == f"/api/tasks/{body['id']}"
    task = Task.objects.get(id=body["id"])
    assert task.owner == user
    assert task.dispatch_id is not None
    assert "Idempotent-Replayed" not in response


def test_create_with_a_future_run_at_postpones_the_task(api):
    run_at = future(hours=2)
    body = create(api, type="echo", payload={}, run_at=run_at)
    assert body["status"] == "postponed"
    assert datetime.fromisoformat(body["run_at"]) == datetime.fromisoformat(run_at)
    assert Task.objects.get(id=body["id"]).dispatch_id is None


def test_create_with_a_null_run_at_queues_the_task(api):
    assert create(api, type="echo", payload={}, run_at=None)["status"] == "queued"


@pytest.mark.parametrize("max_retries", [0, 10])
def test_create_accepts_max_retries_at_the_limits(api, max_retries):
    body = create(api, type="echo", payload={}, max_retries=max_retries)
    assert body["max_retries"] == max_retries


@pytest.mark.parametrize("max_retries", [11, -1, 10**12])
def test_create_with_max_retries_out_of_range_is_400(api, max_retries):
    response = api.post(
        "/api/tasks", {"type": "echo", "payload": {}, "max_retries": max_retries}, format="json"
    )
    assert_error(response, 400, "validation_error", fields=("max_retries",))
    assert not Task.objects.exists()


@pytest.mark.parametrize("max_retries", ["three", 2.5, True, [1]])
def test_create_with_a_max_retries_that_is_no_integer_is_400(api, max_retries):
    response = api.post(
        "/api/tasks", {"type": "echo", "payload": {}, "max_retries": max_retries}, format="json"
    )
    assert_error(response, 400, "validation_error", fields=("max_retries",))


@pytest.mark.parametrize(
    "run_at", [(timezone.now() - timedelta(minutes=1)).isoformat(), "2001-01-01T00:00:00Z"]
)
def test_create_with_run_at_in_the_past_is_400(api, run_at):
    response = api.post(
        "/api/tasks", {"type": "echo", "payload": {}, "run_at": run_at}, format="json"
    )
    assert_error(response, 400, "validation_error", fields=("run_at",))
    assert not Task.objects.exists()


@pytest.mark.parametrize("run_at", ["tomorrow", "2030-13-01T00:00:00Z", 12])
def test_create_with_a_run_at_that_is_no_date_is_400(api, run_at):
    response = api.post(
        "/api/tasks", {"type": "echo", "payload": {}, "run_at": run_at}, format="json"
    )
    assert_error(response, 400, "validation_error", fields=("run_at",))


def test_create_with_an_unknown_type_lists_the_valid_types(api):
    response = api.post("/api/tasks", {"type": "no_such_type", "payload": {}}, format="json")
    error = assert_error(response, 400, "unknown_task_type", fields=("type",))
    assert "echo" in error["message"]
    assert "long_computation" in error["message"]
    assert {"echo", "long_computation"} <= set(error["valid_types"])
    assert not Task.objects.exists()


@pytest.mark.parametrize("body", [{"payload": {}}, {"type": "", "payload": {}}])
def test_create_without_a_type_is_400(api, body):
    assert_error(api.post("/api/tasks", body, format="json"), 400, "validation_error", ("type",))


@pytest.mark.parametrize("payload", [{"duration": -5}, {}, {"duration": "long"}, {"duration": 601}])
def test_create_with_an_invalid_payload_names_the_payload_field(api, payload):
    response = api.post(
        "/api/tasks", {"type": "long_computation", "payload": payload}, format="json"
    )
    error = assert_error(response, 400, "validation_error", fields=("payload.duration",))
    assert "payload.duration" in error["message"]
    assert not Task.objects.exists()


def test_create_with_a_missing_payload_validates_an_empty_one(api):
    response = api.post("/api/tasks", {"type": "long_computation"}, format="json")
    assert_error(response, 400, "validation_error", fields=("payload.duration",))


@pytest.mark.parametrize("payload", [[1, 2], "text", 3, None])
def test_create_with_a_payload_that_is_no_object_is_400(api, payload):
    response = api.post("/api/tasks", {"type": "echo", "payload": payload}, format="json")
    assert_error(response, 400, "validation_error", fields=("payload",))


def test_create_with_a_payload_too_large_is_413(api, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_PAYLOAD_BYTES": 100}
    response = api.post("/api/tasks", {"type": "echo", "payload": {"x": "y" * 200}}, format="json")
    assert_error(response, 413, "payload_too_large", fields=("payload",))


def test_create_with_a_body_larger_than_django_accepts_is_413(api, settings):
    """Regression: Django's RequestDataTooBig became a generic 400 "bad_request"."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = api.post("/api/tasks", {"type": "echo", "payload": {"x": "y" * 2000}}, format="json")
    assert_error(response, 413, "payload_too_large")
    assert not Task.objects.exists()


def test_create_with_malformed_json_is_400(api):
    response = api.post("/api/tasks", '{"type": "echo", ', content_type="application/json")
    error = assert_error(response, 400, "malformed_request")
    assert error["message"].startswith("Malformed request body")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"type": "echo", "payload": {"x": 1e999}}', "payload.x"),
        ('{"type": "echo", "payload": {"x": -1e999}}', "payload.x"),
        ('{"type": "echo", "params": {"x": [1, 1e999]}}', "params.x[1]"),
    ],
    ids=["payload", "negative", "params"],
)
@pytest.mark.parametrize("key", [None, "k-1"], ids=["no-key", "idempotency-key"])
def test_create_with_a_number_that_overflows_to_infinity_is_400(api, body, where, key):
    """Regression: json.loads makes 1e999 Infinity, which jsonb refuses: a 500 (DataError)."""
    api.raise_request_exception = False
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = api.post("/api/tasks", body, content_type="application/json", **headers)
    error = assert_error(response, 400, "malformed_request")
    assert where in error["message"], error
    assert not Task.objects.exists()


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (
            '{"type": "long_computation", "payload": {"duration": 5}, '
            '"payload": {"duration": 600}}',
            "payload",
        ),
        ('{"type": "echo", "payload": {"a": {"b": 1, "c": 2, "b": 1}}}', "b"),
        ('{"type": "echo", "type": "echo"}', "type"),
    ],
    ids=["payload", "nested-same-value", "type"],
)
def test_create_with_a_key_given_twice_is_400_not_the_last_value(api, body, key):
    """Regression: json.loads kept the last value: the task ran 600 s, not the 5 s also sent."""
    response = api.post("/api/tasks", body, content_type="application/json")
    error = assert_error(response, 400, "malformed_request")
    assert f"duplicate key '{key}'" in error["message"], error
    assert not Task.objects.exists()


def test_bulk_and_patch_with_a_key_given_twice_are_400(api, user):
    body = '{"tasks": [{"type": "echo", "payload": {"a": 1, "a": 2}}]}'
    response = api.post("/api/tasks/bulk", body, content_type="application/json")
    assert "duplicate key 'a'" in assert_error(response, 400, "malformed_request")["message"]
    task_id = create(api, type="echo", payload={"a": 0})["id"]
    body = '{"payload": {"a": 1}, "payload": {"a": 2}}'
    response = api.patch(f"/api/tasks/{task_id}", body, content_type="application/json")
    assert "duplicate key 'payload'" in assert_error(response, 400, "malformed_request")["message"]
    assert Task.objects.get().payload == {"a": 0}


@pytest.mark.parametrize("body", ["[]", '"echo"', "3", "null"])
def test_create_with_a_json_body_that_is_no_object_is_400(api, body):
    response = api.post("/api/tasks", body, content_type="application/json")
    assert_error(response, 400, "validation_error", fields=("non_field_errors",))


def test_create_with_an_unsupported_content_type_is_415(api):
    response = api.post("/api/tasks", "type=echo", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type")


def test_create_with_unknown_fields_names_them(api):
    response = api.post(
        "/api/tasks",
        {"type": "echo", "payload": {}, "priority": 5, "retries": 2},
        format="json",
    )
    error = assert_error(response, 400, "validation_error", fields=("priority", "retries"))
    assert "Known fields" in error["fields"]["priority"][0]
    assert not Task.objects.exists()


@pytest.mark.parametrize("form", ["multipart", "urlencoded"])
def test_create_with_a_form_field_sent_twice_is_400_not_the_last_value(api, form):
    """Regression: a form's last value was kept: the task ran 600 s, not the 5 s also sent."""
    body = {"type": "long_computation", "payload": ['{"duration": 5}', '{"duration": 600}']}
    if form == "multipart":
        response = api.post("/api/tasks", body, format="multipart")
    else:
        response = api.post(
            "/api/tasks",
            urlencode(body, doseq=True),
            content_type="application/x-www-form-urlencoded",
        )
    error = assert_error(response, 400, "validation_error", fields=("payload",))
    assert error["fields"]["payload"] == ["Sent 2 times: send one value."]
    assert not Task.objects.exists()


def test_create_accepts_seed_001s_params_for_payload(api):
    body = create(api, type="long_computation", params={"duration": 3})
    assert body["payload"] == {"duration": 3.0}
    assert body["queue"] == "io"


def test_create_with_both_payload_and_params_is_400(api):
    """Regression: params was silently dropped when payload was given too."""
    response = api.post(
        "/api/tasks",
        {"type": "echo", "payload": {"a": 1}, "params": {"b": 2}},
        format="json",
    )
    assert_error(response, 400, "validation_error", fields=("params",))
    assert not Task.objects.exists()


def test_create_the_seed_002_readme_way_with_a_bare_token(user):
    """Seed 002 README curl: bare `Authorization: <token>`; type/payload/max_retries/run_at."""
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=str(RefreshToken.for_user(user).access_token))
    run_at = future(minutes=30)
    response = client.post(
        "/api/tasks",
        {
            "type": "long_computation",
            "payload": {"duration": 5},
            "max_retries": 2,
            "run_at": run_at,
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["type"], body["status"], body["max_retries"]) == (
        "long_computation",
        "postponed",
        2,
    )
    assert body["payload"] == {"duration": 5.0}
    listed = client.get("/api/tasks").json()["results"]
    assert [t["id"] for t in listed] == [body["id"]]


@pytest.mark.django_db
def test_create_without_credentials_is_401(anon):
    response = anon.post("/api/tasks", {"type": "echo", "payload": {}}, format="json")
    assert_error(response, 401, "not_authenticated")
    assert not Task.objects.exists()


def test_create_publishes_after_commit(api, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        echo = create(api, type="echo", payload={})
        slow = create(api, type="long_computation", payload={"duration": 1})
        later = create(api, type="echo", payload={}, run_at=future())
    assert wait_for(lambda: broker.depth("default") == 1, what="the echo message")
    assert wait_for(lambda: broker.depth("io") == 1, what="the long_computation message")
    published = dict(Task.objects.values_list("id", "published_at"))
    assert published[uuid.UUID(echo["id"])] is not None
    assert published[uuid.UUID(slow["id"])] is not None
    assert published[uuid.UUID(later["id"])] is None  # postponed: nothing to publish yet


# --- Idempotency-Key -------------------------------------------------------------------------


def test_a_repeated_idempotency_key_returns_the_first_task(api):
    body = {"type": "echo", "payload": {"n": 1}}
    first = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    again = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="order-42")
    assert first.status_code == 201
    assert again.status_code == 200, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again["Location"] == first["Location"]
    assert Task.objects.count() == 1


def test_an_idempotency_key_replay_sees_params_and_payload_as_the_same(api):
    first = api.post(
        "/api/tasks",
        {"type": "echo", "payload": {"n": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    again = api.post(
        "/api/tasks",
        {"type": "echo", "params": {"n": 1}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="k",
    )
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize(
    "second",
    [
        {"type": "echo", "payload": {"n": 2}},
        {"type": "echo", "payload": {"n": 1}, "max_retries": 5},
        {"type": "echo", "payload": {"n": 1}, "run_at": "2099-01-01T00:00:00Z"},
    ],
    ids=["payload", "max_retries", "run_at"],
)
def test_an_idempotency_key_reused_with_another_body_is_409(api, second):
    api.post(
        "/api/tasks", {"type": "echo", "payload": {"n": 1}}, format="json", HTTP_IDEMPOTENCY_KEY="k"
    )
    response = api.post("/api/tasks", second, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert_error(response, 409, "idempotency_key_reused", fields=("Idempotency-Key",))
    assert Task.objects.count() == 1


def test_an_idempotency_key_replay_works_after_its_run_at_has_passed(api):
    """Regression: the repeat was refused with "run_at must be in the future" (a 400)."""
    # Far enough ahead that the first request arrives before it on a loaded machine (0.5 s did
    # not: the first create failed with run_at already past), near enough to wait for.
    run_at = timezone.now() + timedelta(seconds=3)
    body = {"type": "echo", "payload": {}, "run_at": run_at.isoformat()}
    first = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="soon")
    assert first.status_code == 201, first.content
    wait_for(lambda: timezone.now() > run_at, what="run_at to pass")
    again = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="soon")
    assert again.status_code == 200, again.content
    assert again.json()["id"] == first.json()["id"]
    # Without the key, the same body is a new request, and its run_at is in the past.
    assert_error(api.post("/api/tasks", body, format="json"), 400, "validation_error", ("run_at",))
    assert Task.objects.count() == 1


def test_idempotency_keys_belong_to_one_user(api, other_api):
    body = {"type": "echo", "payload": {}}
    mine = api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    theirs = other_api.post("/api/tasks", body, format="json", HTTP_IDEMPOTENCY_KEY="shared")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert mine.json()["id"] != theirs.json()["id"]


def test_an_idempotency_key_too_long_is_400(api):
    response = api.post(
        "/api/tasks", {"type": "echo", "payload": {}}, format="json", HTTP_IDEMPOTENCY_KEY="k" * 201
    )
    assert_error(response, 400, "validation_error", fields=("Idempotency-Key",))
    assert not Task.objects.exists()


def test_without_an_idempotency_key_each_post_creates_a_task(api):
    create(api, type="echo", payload={})
    create(api, type="echo", payload={})
    assert Task.objects.count() == 2


# --- List ------------------------------------------------------------------------------------


def test_list_shows_only_my_tasks_newest_first(api, other_api):
    mine = [create(api, type="echo", payload={"i": i})["id"] for i in range(3)]
    create(other_api, type="echo", payload={})
    response = api.get("/api/tasks")
    assert response.status_code == 200
    body = response.json()
    assert [t["id"] for t in body["results"]] == list(reversed(mine))
    assert body["next"] is None
    assert body["previous"] is None
    assert "payload" not in body["results"][0]  # the list stays light
    assert "result" not in body["results"][0]


def test_list_pages_with_a_cursor(api):
    ids = [create(api, type="echo", payload={"i": i})["id"] for i in range(5)]
    newest_first = list(reversed(ids))
    seen: list[str] = []
    url: str | None = "/api/tasks?page_size=2"
    pages = 0
    while url:
        page = api.get(url)
        assert page.status_code == 200, page.content
        results = page.json()["results"]
        assert len(results) <= 2
        seen += [t["id"] for t in results]
        url = page.json()["next"]
        pages += 1
    assert seen == newest_first
    assert pages == 3


def test_list_keeps_its_filters_across_pages(api):
    echoes = [create(api, type="echo", payload={"i": i})["id"] for i in range(3)]
    create(api, type="long_computation", payload={"duration": 1})
    seen: list[str] = []
    url: str | None = "/api/tasks?type=echo&status=queued&page_size=1"
    while url:
        page = api.get(url).json()
        seen += [t["id"] for t in page["results"]]
        url = page["next"]
        assert url is None or ("type=echo" in url and "status=queued" in url)
    assert seen == list(reversed(echoes))


def test_list_page_size_goes_up_to_200(api, user):
    now = timezone.now()
    Task.objects.bulk_create(
        Task(owner=user, type="echo", payload={}, queue="default", status=S.CANCELLED)
        for _ in range(205)
    )
    Task.objects.filter(owner=user).update(created_at=now)
    page = api.get("/api/tasks?page_size=200").json()
    assert len(page["results"]) == 200
    assert page["next"] is not None
    rest = api.get(page["next"]).json()
    assert len(rest["results"]) == 5
    assert not {t["id"] for t in rest["results"]} & {t["id"] for t in page["results"]}


@pytest.mark.parametrize("value", ["1", "01", "200"])
def test_list_page_size_of_1_to_200(api, value):
    for i in range(2):
        create(api, type="echo", payload={"i": i})
    page = api.get(f"/api/tasks?page_size={value}")
    assert page.status_code == 200, page.content
    assert len(page.json()["results"]) == min(int(value), 2)


def test_list_with_an_empty_page_size_has_the_default(api, user):
    Task.objects.bulk_create(
        Task(owner=user, type="echo", payload={}, queue="default", status=S.CANCELLED)
        for _ in range(51)
    )
    assert len(api.get("/api/tasks?page_size=").json()["results"]) == 50


@pytest.mark.parametrize(
    "value",
    [
        "0",
        "-1",
        "abc",
        "1.5",
        "201",
        "1000",
        "99999999999999999999",
        pytest.param("9" * 5000, id="5000-digits"),
        " 5",
        "+5",
        "5_0",
        "\u0665",
        "1e2",
    ],
)
def test_list_page_size_outside_1_to_200_is_400(api, user, value):
    """Regression: DRF's cursor pagination answered 0, -1, abc or 1.5 with the default page
    size and 201 with 200, where docs/api.md says 1..200."""
    create(api, type="echo", payload={})
    error = assert_error(
        api.get("/api/tasks", {"page_size": value}), 400, "validation_error", ("page_size",)
    )
    assert error["fields"] == {"page_size": ["Must be an integer from 1 to 200."]}


def test_list_with_an_invalid_cursor_is_400(api):
    assert_error(api.get("/api/tasks?cursor=not-a-cursor"), 400, "invalid_cursor", ("cursor",))


def forged_cursor(**tokens: str) -> str:
    """A cursor as DRF encodes one: base64 of a query string (o offset, r reverse, p position)."""
    return base64.b64encode(urlencode(tokens).encode()).decode()


@pytest.mark.parametrize(
    "position",
    [
        "garbage",
        "",
        "9999-99-99",
        "10000-01-01",
        "2030-02-30 12:00:00+00:00",
        "2030-01-01 00:00:00",  # naive: ours are aware
        "2030-01-01",
        "9999-12-31 23:00:00-05:00",  # past year 9999 in UTC
        "0001-01-01 00:00:00+01:00",  # before year 1 in UTC
    ],
)
def test_list_with_a_forged_cursor_position_is_invalid_cursor(api, user, position):
    """Regression: the position went to created_at__lt as it was: Django's "value has an invalid
    format" as a validation_error on non_field_errors, never naming the cursor."""
    create(api, type="echo", payload={})
    for cursor in (forged_cursor(p=position), forged_cursor(r="1", p=position)):
        error = assert_error(
            api.get("/api/tasks", {"cursor": cursor}), 400, "invalid_cursor", ("cursor",)
        )
        assert error["fields"] == {"cursor": ["Invalid cursor."]}


@pytest.mark.parametrize("cursor", ["!!!!", "%00", "~~~~", "====", forged_cursor(x="1")])
def test_list_with_a_cursor_that_decodes_to_nothing_is_not_the_first_page(api, cursor):
    """Regression: b64decode skips what is not base64, so "!!!!" decoded to "" and was read
    as the first page, a 200."""
    create(api, type="echo", payload={})
    assert_error(api.get(f"/api/tasks?cursor={cursor}"), 400, "invalid_cursor", ("cursor",))


def test_list_with_an_empty_cursor_is_the_first_page(api):
    task = create(api, type="echo", payload={})
    page = api.get("/api/tasks?cursor=")
    assert page.status_code == 200, page.content
    assert [t["id"] for t in page.json()["results"]] == [task["id"]]


def test_list_reads_a_cursor_position_with_any_offset_in_utc(api, user):
    """Regression: an offset PostgreSQL refuses (past ±15:59) reached it: a 500."""
    ids = [create(api, type="echo", payload={"i": i})["id"] for i in range(3)]
    times = [datetime(2030, 1, 1, hour, tzinfo=UTC) for hour in (1, 2, 3)]
    for task_id, at in zip(ids, times, strict=True):
        Task.objects.filter(id=task_id).update(created_at=at)
    # 2030-01-02 01:59+23:59 is 2030-01-01 02:00 UTC: the tasks created before it.
    page = api.get("/api/tasks", {"cursor": forged_cursor(p="2030-01-02T01:59:00+23:59")})
    assert page.status_code == 200, page.content
    assert [t["id"] for t in page.json()["results"]] == [ids[0]]


def test_the_benchmarks_deep_cursor_is_still_a_cursor(api, user):
    """tests/bench/scale.deep_cursor writes a cursor as DRF does, for docs/benchmarks.md's deep
    cursor page: it must stay a page, not become an invalid_cursor."""
    ids = [create(api, type="echo", payload={"i": i})["id"] for i in range(4)]
    cursor = scale.deep_cursor(owner_id=user.id, depth=1)
    page = api.get(f"/api/tasks?cursor={cursor}")
    assert page.status_code == 200, page.content
    assert [t["id"] for t in page.json()["results"]] == list(reversed(ids))[2:]


def test_a_cursor_of_ours_decodes_as_drf_decodes_it(api, user):
    """Valid cursors unchanged: the position of a next or previous link, an offset past a tie."""
    now = timezone.now()
    Task.objects.bulk_create(
        Task(owner=user, type="echo", payload={}, queue="default", status=S.CANCELLED)
        for _ in range(4)
    )
    Task.objects.filter(owner=user).update(created_at=now)
    older = create(api, type="echo", payload={})["id"]
    Task.objects.filter(id=older).update(created_at=now - timedelta(seconds=1))
    first = api.get("/api/tasks?page_size=2").json()
    second = api.get(first["next"]).json()
    links = [first["next"], second["next"], second["previous"]]
    cursors = [parse_qs(urlsplit(link).query)["cursor"][0] for link in links]
    decoded = []
    for cursor in cursors:
        request = Request(APIRequestFactory().get("/api/tasks", {"cursor": cursor}))
        ours = TaskCursorPagination().decode_cursor(request)
        assert ours is not None
        assert ours == CursorPagination().decode_cursor(request)
        decoded.append(ours)
    assert {cursor.position is None for cursor in decoded} == {True, False}  # both kinds met


def test_list_filters_by_status_repeatable(api, user):
    queued = create(api, type="echo", payload={})["id"]
    postponed = create(api, type="echo", payload={}, run_at=future())["id"]
    cancelled = create(api, type="echo", payload={})["id"]
    api.post(f"/api/tasks/{cancelled}/cancel")

    def listed(query: str) -> set[str]:
        response = api.get(f"/api/tasks?{query}")
        assert response.status_code == 200, response.content
        return {t["id"] for t in response.json()["results"]}

    assert listed("status=queued") == {queued}
    assert listed("status=queued&status=postponed") == {queued, postponed}
    assert listed("status=cancelled") == {cancelled}
    assert listed("status=succeeded") == set()


@pytest.mark.parametrize(
    "query",
    ["status=bogus", "status=queued&status=bogus", "created_after=yesterday", "created_before=x"],
)
def test_list_with_an_invalid_filter_is_400_not_all_tasks(api, query):
    """Regression: django-filter ignored an invalid value and the whole list came back."""
    create(api, type="echo", payload={})
    name = query.split("&")[-1].split("=")[0]
    assert_error(api.get(f"/api/tasks?{query}"), 400, "validation_error", fields=(name,))


def test_list_filters_by_type(api):
    echo = create(api, type="echo", payload={})["id"]
    create(api, type="long_computation", payload={"duration": 1})
    results = api.get("/api/tasks", {"type": "echo"}).json()["results"]
    assert [t["id"] for t in results] == [echo]
    assert api.get("/api/tasks", {"type": "nope"}).json()["results"] == []


def test_list_filters_by_creation_time(api):
    ids = [create(api, type="echo", payload={"i": i})["id"] for i in range(3)]
    times = [datetime(2030, 1, day, 12, tzinfo=UTC) for day in (1, 2, 3)]
    for task_id, at in zip(ids, times, strict=True):
        Task.objects.filter(id=task_id).update(created_at=at)

    def listed(**params: str) -> list[str]:
        response = api.get("/api/tasks", params)
        assert response.status_code == 200, response.content
        return [t["id"] for t in response.json()["results"]]

    assert listed(created_after=times[1].isoformat()) == [ids[2], ids[1]]
    assert listed(created_before=times[1].isoformat()) == [ids[0]]
    assert listed(created_after=times[0].isoformat(), created_before=times[2].isoformat()) == [
        ids[1],
        ids[0],
    ]
    assert listed(created_after="2030-01-02T12:00:00Z") == [ids[2], ids[1]]


def test_list_filters_by_dead_lettered(api):
    dead = create(api, type="echo", payload={})["id"]
    alive = create(api, type="echo", payload={})["id"]
    Task.objects.filter(id=dead).update(
        status=S.FAILED, dead_lettered_at=timezone.now(), dead_letter_reason="rejected"
    )
    yes = api.get("/api/tasks", {"dead_lettered": "true"}).json()["results"]
    no = api.get("/api/tasks", {"dead_lettered": "false"}).json()["results"]
    assert [t["id"] for t in yes] == [dead]
    assert yes[0]["dead_letter_reason"] == "rejected"
    assert [t["id"] for t in no] == [alive]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", "dead"), ("True", "dead"), ("TRUE", "dead"), ("False", "alive"), ("FALSE", "alive")],
)
def test_list_reads_dead_lettered_in_any_case(api, value, expected):
    ids = {name: create(api, type="echo", payload={})["id"] for name in ("dead", "alive")}
    Task.objects.filter(id=ids["dead"]).update(
        status=S.FAILED, dead_lettered_at=timezone.now(), dead_letter_reason="rejected"
    )
    for query in (f"dead_lettered={value}", f"dead_lettered={value}&status=failed&status=queued"):
        response = api.get(f"/api/tasks?{query}")
        assert response.status_code == 200, response.content
        assert [t["id"] for t in response.json()["results"]] == [ids[expected]], query


@pytest.mark.parametrize(
    "value",
    ["yes", "no", "1", "0", "on", "off", "maybe", "2", "3", "unknown", " true", "truefalse"],
)
def test_list_with_a_dead_lettered_other_than_true_or_false_is_400(api, value):
    """Regression: django-filter's BooleanFilter read yes, 1 or on as no value, so the whole list
    came back, and 2 and 3 as true and false."""
    create(api, type="echo", payload={})
    for query in (
        {"dead_lettered": value},
        {"dead_lettered": value, "status": ["failed", "queued"]},
    ):
        error = assert_error(
            api.get("/api/tasks", query), 400, "validation_error", ("dead_lettered",)
        )
        assert error["fields"] == {"dead_lettered": ["Must be true or false."]}


def test_list_with_an_empty_dead_lettered_is_not_filtered(api):
    ids = [create(api, type="echo", payload={})["id"] for _ in range(2)]
    Task.objects.filter(id=ids[0]).update(
        status=S.FAILED, dead_lettered_at=timezone.now(), dead_letter_reason="rejected"
    )
    response = api.get("/api/tasks?dead_lettered=")
    assert response.status_code == 200, response.content
    assert [t["id"] for t in response.json()["results"]] == list(reversed(ids))


def test_list_does_a_constant_number_of_queries(api, user, django_assert_max_num_queries):
    """No N+1: listing 50 tasks costs the same queries as listing 5 (auth + one page)."""

    def add(count: int) -> None:
        for i in range(count):
            kind = ("echo", {"i": i}) if i % 2 else ("long_computation", {"duration": 1})
            services.task_create(owner=user, type=kind[0], payload=kind[1])

    add(5)
    api.get("/api/me")  # the user's row is cached from now on (apps.accounts.authentication)
    with django_assert_max_num_queries(3) as few:
        assert len(api.get("/api/tasks").json()["results"]) == 5
    add(45)
    with django_assert_max_num_queries(3) as many:
        assert len(api.get("/api/tasks").json()["results"]) == 50
    assert len(many.captured_queries) == len(few.captured_queries)


@pytest.mark.django_db
def test_list_without_credentials_is_401(anon):
    assert_error(anon.get("/api/tasks"), 401, "not_authenticated")


# --- Detail ----------------------------------------------------------------------------------


def test_detail_has_the_payload_attempts_and_history(api, user):
    task = create(api, type="echo", payload={"k": "v"})
    response = api.get(f"/api/tasks/{task['id']}")
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == task["id"]
    assert body["payload"] == {"k": "v"}
    assert body["attempts"] == []
    assert len(body["history"]) == 1
    assert body["history"][0]["from_status"] == ""
    assert body["history"][0]["to_status"] == "queued"
    assert body["history"][0]["note"] == "created"


def test_detail_accepts_a_trailing_slash_and_an_undashed_uuid(api):
    task_id = create(api, type="echo", payload={})["id"]
    assert api.get(f"/api/tasks/{task_id}/").json()["id"] == task_id
    assert api.get(f"/api/tasks/{uuid.UUID(task_id).hex}").json()["id"] == task_id


def test_detail_of_an_unknown_task_is_404(api):
    assert_error(api.get(f"/api/tasks/{uuid.uuid4()}"), 404, "task_not_found")


@pytest.mark.parametrize("path", ["not-a-uuid", "123", "../me", "0000-xyz/result"])
def test_a_non_uuid_id_is_a_json_404(api, path):
    response = api.get(f"/api/tasks/{path}")
    assert_error(response, 404, "not_found")
    assert response["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("get", "/result", None),
        ("patch", "", {"payload": {"x": 1}}),
        ("delete", "", None),
        ("post", "/cancel", None),
        ("post", "/retry", None),
    ],
)
def test_another_users_task_is_404_everywhere(api, other_api, method, suffix, body):
    task_id = create(other_api, type="echo", payload={})["id"]
    Task.objects.filter(id=task_id).update(status=S.CANCELLED)  # so delete/retry could act
    response = getattr(api, method)(f"/api/tasks/{task_id}{suffix}", body, format="json")
    assert_error(response, 404, "task_not_found")
    task = Task.objects.get(id=task_id)
    assert (task.status, task.payload) == (S.CANCELLED, {})


@pytest.mark.django_db
@pytest.mark.parametrize("suffix", ["", "/result", "/cancel", "/retry"])
def test_per_task_endpoints_without_credentials_are_401(anon, suffix):
    method = anon.post if suffix in {"/cancel", "/retry"} else anon.get
    assert_error(method(f"/api/tasks/{uuid.uuid4()}{suffix}"), 401, "not_authenticated")


def test_an_unsupported_method_is_405(api):
    task_id = create(api, type="echo", payload={})["id"]
    response = api.put(f"/api/tasks/{task_id}", {"payload": {}}, format="json")
    assert_error(response, 405, "method_not_allowed")
    assert_error(api.delete("/api/tasks"), 405, "method_not_allowed")


# --- Result ----------------------------------------------------------------------------------


def test_result_of_a_queued_task(api):
    task = create(api, type="echo", payload={"a": 1})
    response = api.get(f"/api/tasks/{task['id']}/result")
    assert response.status_code == 200
    body = response.json()
    assert set(body) >= RESULT_KEYS
    assert body["task_id"] == task["id"]
    assert body["status"] == "queued"
    assert body["result"] is None
    assert body["error"] == ""
    assert body["created_at"] == task["created_at"]
    assert body["started_at"] is None
    assert body["ended_at"] is None


@pytest.mark.django_db(transaction=True)
def test_result_of_a_succeeded_task(api, broker):
    task = create(api, type="echo", payload={"hello": "world"})
    assert deliver(task["id"]).status == S.SUCCEEDED
    body = api.get(f"/api/tasks/{task['id']}/result").json()
    assert set(body) >= RESULT_KEYS
    assert body["status"] == "succeeded"
    assert body["result"] == {"hello": "world"}
    assert body["error"] == ""
    assert body["started_at"] is not None
    assert body["ended_at"] is not None
    assert body["ended_at"] >= body["started_at"] >= body["created_at"]
    detail = api.get(f"/api/tasks/{task['id']}").json()
    assert [a["outcome"] for a in detail["attempts"]] == ["succeeded"]
    assert [h["to_status"] for h in detail["history"]] == ["queued", "running", "succeeded"]


@pytest.mark.django_db(transaction=True)
def test_result_of_a_failed_task(api, broker):
    task = create(api, type="test_permanent", payload={})
    assert deliver(task["id"]).status == S.FAILED
    body = api.get(f"/api/tasks/{task['id']}/result").json()
    assert set(body) >= RESULT_KEYS
    assert body["status"] == "failed"
    assert body["result"] is None
    assert body["error"] == "this input can never work"
    assert body["started_at"] is not None
    assert body["ended_at"] is not None


def test_result_of_an_unknown_task_is_404(api):
    assert_error(api.get(f"/api/tasks/{uuid.uuid4()}/result"), 404, "task_not_found")


# --- Update (PATCH) --------------------------------------------------------------------------


def test_patch_a_queued_tasks_payload_and_max_retries(api):
    task = create(api, type="long_computation", payload={"duration": 1})
    response = api.patch(
        f"/api/tasks/{task['id']}", {"payload": {"duration": 2}, "max_retries": 7}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["payload"], body["max_retries"]) == (
        "queued",
        {"duration": 2.0},
        7,
    )
    row = Task.objects.get(id=task["id"])
    assert (row.payload, row.max_retries) == ({"duration": 2.0}, 7)


def test_patch_a_queued_task_with_a_future_run_at_postpones_it(api):
    task = create(api, type="echo", payload={})
    run_at = future(hours=3)
    body = api.patch(f"/api/tasks/{task['id']}", {"run_at": run_at}, format="json").json()
    assert body["status"] == "postponed"
    assert datetime.fromisoformat(body["run_at"]) == datetime.fromisoformat(run_at)
    assert Task.objects.get(id=task["id"]).dispatch_id is None  # its message is now stale
    assert history(api, task["id"]) == ["queued", "postponed"]


def test_patch_a_postponed_task_with_a_null_run_at_queues_it(api):
    task = create(api, type="echo", payload={}, run_at=future())
    response = api.patch(f"/api/tasks/{task['id']}", {"run_at": None}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["run_at"]) == ("queued", None)
    assert Task.objects.get(id=task["id"]).dispatch_id is not None
    assert history(api, task["id"]) == ["postponed", "queued"]


def test_patch_a_postponed_task_moves_its_run_at_and_payload(api):
    task = create(api, type="echo", payload={"v": 1}, run_at=future(hours=1))
    later = future(hours=5)
    body = api.patch(
        f"/api/tasks/{task['id']}", {"run_at": later, "payload": {"v": 2}}, format="json"
    ).json()
    assert body["status"] == "postponed"
    assert datetime.fromisoformat(body["run_at"]) == datetime.fromisoformat(later)
    assert body["payload"] == {"v": 2}
    assert history(api, task["id"]) == ["postponed"]


def test_patch_with_an_empty_body_is_400(api):
    task = create(api, type="echo", payload={})
    assert_error(api.patch(f"/api/tasks/{task['id']}", {}, format="json"), 400, "validation_error")
    assert_error(api.patch(f"/api/tasks/{task['id']}"), 400, "validation_error")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"payload": {"duration": -5}}, "payload.duration"),
        ({"payload": {}}, "payload.duration"),
        ({"payload": [1]}, "payload"),
        ({"payload": None}, "payload"),
        ({"max_retries": 11}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": None}, "max_retries"),
        ({"run_at": "2001-01-01T00:00:00Z"}, "run_at"),
        ({"run_at": "soon"}, "run_at"),
        ({"type": "echo"}, "type"),
        ({"status": "succeeded"}, "status"),
    ],
)
def test_patch_with_invalid_input_is_400_and_changes_nothing(api, body, field):
    task = create(api, type="long_computation", payload={"duration": 1})
    response = api.patch(f"/api/tasks/{task['id']}", body, format="json")
    assert_error(response, 400, "validation_error", fields=(field,))
    row = Task.objects.get(id=task["id"])
    assert (row.status, row.payload, row.max_retries) == (S.QUEUED, {"duration": 1.0}, 3)


def test_patch_with_malformed_json_is_400(api):
    task = create(api, type="echo", payload={})
    response = api.patch(f"/api/tasks/{task['id']}", "{", content_type="application/json")
    assert_error(response, 400, "malformed_request")


@pytest.mark.parametrize(
    "body",
    [{"payload": {"x": 1}}, {"max_retries": 1}, {"run_at": None}, {"run_at": "2099-01-01T00:00Z"}],
)
def test_patch_a_running_task_is_409(api, body):
    task = create(api, type="echo", payload={})
    claim(task["id"])
    response = api.patch(f"/api/tasks/{task['id']}", body, format="json")
    error = assert_error(response, 409, "task_already_started")
    assert error["status"] == "running"
    row = Task.objects.get(id=task["id"])
    assert (row.status, row.payload, row.max_retries, row.run_at) == (S.RUNNING, {}, 3, None)


@pytest.mark.django_db(transaction=True)
def test_patch_a_retrying_task_then_a_succeeded_one(api, broker):
    task = create(api, type="test_flaky", payload={"fail_times": 1}, max_retries=3)
    assert deliver(task["id"]).status == S.RETRYING
    response = api.patch(
        f"/api/tasks/{task['id']}", {"payload": {"fail_times": 0}, "max_retries": 5}, format="json"
    )
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["max_retries"]) == ("retrying", 5)

    wait_for(services.release_due_tasks, what="the retry to become due")
    assert deliver(task["id"]).status == S.SUCCEEDED
    response = api.patch(f"/api/tasks/{task['id']}", {"payload": {"fail_times": 3}}, format="json")
    error = assert_error(response, 409, "task_already_started")
    assert error["status"] == "succeeded"
    assert Task.objects.get(id=task["id"]).payload["fail_times"] == 0


# --- Cancel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("run_at", [None, "future"])
def test_cancel_a_waiting_task_cancels_it_at_once(api, run_at):
    task = create(api, type="echo", payload={}, run_at=future() if run_at else None)
    response = api.post(f"/api/tasks/{task['id']}/cancel")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert body["run_at"] is None
    row = Task.objects.get(id=task["id"])
    assert (row.status, row.dispatch_id) == (S.CANCELLED, None)
    assert history(api, task["id"])[-1] == "cancelled"


def test_cancel_a_running_task_asks_its_handler(api, user):
    task = create(api, type="echo", payload={})
    claim(task["id"])
    response = api.post(f"/api/tasks/{task['id']}/cancel")
    assert response.status_code == 200, response.content
    assert (response.json()["status"], response.json()["cancel_requested"]) == ("running", True)
    again = api.post(f"/api/tasks/{task['id']}/cancel")
    assert again.status_code == 200
    assert (again.json()["status"], again.json()["cancel_requested"]) == ("running", True)
    notes = TaskStatusChange.objects.filter(task_id=task["id"], from_status=S.RUNNING)
    assert notes.filter(to_status=S.RUNNING).count() == 1  # asked once, not twice
    assert notes.get().actor == user


@pytest.mark.django_db(transaction=True)
def test_cancel_a_running_task_ends_it_cancelled(api, broker):
    task = create(api, type="test_sleep", payload={"seconds": 60})
    outcome: list[DeliveryOutcome] = []

    def work() -> None:
        try:
            outcome.append(deliver(task["id"]))
        finally:
            connection.close()

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    try:
        wait_for(lambda: status_of(task["id"]) == S.RUNNING, what="the handler to start")
        response = api.post(f"/api/tasks/{task['id']}/cancel")
        assert response.status_code == 200, response.content
        assert (response.json()["status"], response.json()["cancel_requested"]) == (
            "running",
            True,
        )
        worker.join(timeout=20)
        assert not worker.is_alive(), "the handler did not notice the cancel request"
    finally:
        if worker.is_alive():  # never leave a thread sleeping 60 s behind
            Task.objects.filter(id=task["id"]).update(cancel_requested_at=timezone.now())
            worker.join(timeout=20)
    assert outcome[0].status == S.CANCELLED
    detail = api.get(f"/api/tasks/{task['id']}").json()
    assert detail["status"] == "cancelled"
    assert [a["outcome"] for a in detail["attempts"]] == ["cancelled"]
    assert [h["to_status"] for h in detail["history"]] == [
        "queued",
        "running",
        "running",
        "cancelled",
    ]
    assert api.get(f"/api/tasks/{task['id']}/result").json()["ended_at"] is not None


@pytest.mark.django_db(transaction=True)
def test_cancel_a_task_waiting_to_retry_cancels_it_at_once(api, broker):
    task = create(api, type="test_flaky", payload={"fail_times": 3}, max_retries=3)
    assert deliver(task["id"]).status == S.RETRYING
    body = api.post(f"/api/tasks/{task['id']}/cancel").json()
    assert (body["status"], body["run_at"]) == ("cancelled", None)
    assert services.release_due_tasks() == 0  # nothing left to release


def test_cancel_a_cancelled_task_is_409(api):
    task = create(api, type="echo", payload={})
    api.post(f"/api/tasks/{task['id']}/cancel")
    error = assert_error(api.post(f"/api/tasks/{task['id']}/cancel"), 409, "task_not_cancellable")
    assert error["status"] == "cancelled"


@pytest.mark.django_db(transaction=True)
def test_cancel_a_succeeded_task_is_409(api, broker):
    task = create(api, type="echo", payload={})
    deliver(task["id"])
    error = assert_error(api.post(f"/api/tasks/{task['id']}/cancel"), 409, "task_not_cancellable")
    assert error["status"] == "succeeded"
    assert status_of(task["id"]) == S.SUCCEEDED


# --- Retry -----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_retry_a_failed_task_queues_it_again_keeping_its_history(api, broker):
    task = create(api, type="test_flaky", payload={"fail_times": 5}, max_retries=1)
    assert deliver(task["id"]).status == S.RETRYING
    wait_for(services.release_due_tasks, what="the retry to become due")
    assert deliver(task["id"]).status == S.FAILED
    failed = api.get(f"/api/tasks/{task['id']}").json()
    assert (failed["status"], failed["retries"], failed["attempt_count"]) == ("failed", 1, 2)

    response = api.post(f"/api/tasks/{task['id']}/retry")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["status"], body["retries"], body["attempt_count"]) == ("queued", 0, 2)
    assert body["finished_at"] is None
    detail = api.get(f"/api/tasks/{task['id']}").json()
    assert [h["to_status"] for h in detail["history"]] == [
        "queued",
        "running",
        "retrying",
        "queued",
        "running",
        "failed",
        "queued",
    ]
    assert detail["history"][-1]["note"] == "retried by hand"
    assert [a["outcome"] for a in detail["attempts"]] == ["failed", "failed"]
    # And it runs again, with a fresh message.
    assert deliver(task["id"]).status == S.RETRYING


def test_retry_a_cancelled_task_queues_it(api):
    task = create(api, type="echo", payload={})
    api.post(f"/api/tasks/{task['id']}/cancel")
    body = api.post(f"/api/tasks/{task['id']}/retry").json()
    assert body["status"] == "queued"
    assert Task.objects.get(id=task["id"]).dispatch_id is not None


@pytest.mark.django_db(transaction=True)
def test_retry_a_succeeded_task_is_409(api, broker):
    task = create(api, type="echo", payload={})
    deliver(task["id"])
    error = assert_error(api.post(f"/api/tasks/{task['id']}/retry"), 409, "task_not_retryable")
    assert error["status"] == "succeeded"
    assert status_of(task["id"]) == S.SUCCEEDED


@pytest.mark.parametrize("state", ["queued", "postponed", "running"])
def test_retry_a_task_not_finished_is_409(api, state):
    task = create(api, type="echo", payload={}, run_at=future() if state == "postponed" else None)
    if state == "running":
        claim(task["id"])
    error = assert_error(api.post(f"/api/tasks/{task['id']}/retry"), 409, "task_not_retryable")
    assert error["status"] == state


# --- Delete ----------------------------------------------------------------------------------


def test_delete_a_finished_task(api):
    task = create(api, type="echo", payload={})
    api.post(f"/api/tasks/{task['id']}/cancel")
    response = api.delete(f"/api/tasks/{task['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert not Task.objects.filter(id=task["id"]).exists()
    assert not TaskStatusChange.objects.filter(task_id=task["id"]).exists()
    assert_error(api.get(f"/api/tasks/{task['id']}"), 404, "task_not_found")
    assert_error(api.delete(f"/api/tasks/{task['id']}"), 404, "task_not_found")


@pytest.mark.django_db(transaction=True)
def test_delete_a_succeeded_task(api, broker):
    task = create(api, type="echo", payload={})
    deliver(task["id"])
    assert api.delete(f"/api/tasks/{task['id']}").status_code == 204
    assert not Task.objects.filter(id=task["id"]).exists()


@pytest.mark.parametrize("state", ["queued", "postponed", "running"])
def test_delete_a_task_not_finished_is_409(api, state):
    task = create(api, type="echo", payload={}, run_at=future() if state == "postponed" else None)
    if state == "running":
        claim(task["id"])
    error = assert_error(api.delete(f"/api/tasks/{task['id']}"), 409, "task_not_finished")
    assert error["status"] == state
    assert Task.objects.filter(id=task["id"]).exists()


# --- Task types ------------------------------------------------------------------------------


def test_task_types_lists_the_builtins_with_a_payload_schema(api):
    response = api.get("/api/task-types")
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()}
    assert {"echo", "long_computation"} <= set(types)
    echo = types["echo"]
    assert echo["queue"] == "default"
    assert echo["payload_schema"] == {"type": "object"}
    assert echo["description"]
    long = types["long_computation"]
    assert long["queue"] == "io"
    schema = long["payload_schema"]
    assert schema["type"] == "object"
    assert schema["required"] == ["duration"]
    assert schema["properties"]["duration"]["type"] == "number"
    assert schema["properties"]["duration"]["minimum"] == 0
    assert schema["properties"]["duration"]["maximum"] == 600
    assert long["time_limit_seconds"] == 660
    assert "no-cache" in response["Cache-Control"] or "max-age=0" in response["Cache-Control"]


@pytest.mark.django_db
def test_task_types_without_credentials_is_401(anon):
    assert_error(anon.get("/api/task-types"), 401, "not_authenticated")


def test_an_explicit_default_max_retries_replays_like_an_omitted_one(api):
    headers = {"HTTP_IDEMPOTENCY_KEY": "explicit-default"}
    first = api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json", **headers)
    again = api.post(
        "/api/tasks", {"type": "echo", "payload": {}, "max_retries": 3}, format="json", **headers
    )
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
