"""Webhook task types against a real HTTP service on 127.0.0.1 that verifies each request's
signature with the code docs/handlers.md gives receivers."""

import inspect
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from apps.handlers import signing
from apps.handlers.models import TaskType, TaskTypeKind
from apps.handlers.selectors import invalidate_task_types
from apps.handlers.webhooks import retry_after_seconds
from apps.tasks.models import Task, TaskAttempt
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver, release
from tests.support import processes
from tests.support.wait import wait_for
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver

S = TaskStatus
SECRET = "whsec-test-0123456789"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "handlers.md"


@pytest.fixture
def receiver(settings: Any) -> Iterator[WebhookReceiver]:
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with webhook_receiver(SECRET) as server:
        yield server


def hook(receiver: WebhookReceiver, path: str, name: str = "orders.created", **fields: Any):
    return TaskType.objects.create(
        name=name,
        kind=TaskTypeKind.WEBHOOK,
        url=receiver.url(path),
        signing_secret=fields.pop("signing_secret", SECRET),
        **fields,
    )


def test_a_2xx_json_answer_is_the_result_and_the_request_is_signed(db, user, receiver):
    hook(receiver, "/ok")
    task = create(user, "orders.created", {"order_id": 42, "note": "crème brûlée"})
    assert task.queue == "io"  # webhook types wait on the network

    outcome = deliver(task)

    assert (outcome.status, task.status) == (S.SUCCEEDED, S.SUCCEEDED)
    assert task.result == {"echo": {"order_id": 42, "note": "crème brûlée"}, "attempt": 1}
    [request] = receiver.received
    assert request.signature_valid
    assert request.json == {
        "id": str(task.id),
        "type": "orders.created",
        "payload": {"order_id": 42, "note": "crème brûlée"},
        "attempt": 1,
    }
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["X-TaskFlow-Task-Id"] == str(task.id)
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", request.headers[signing.SIGNATURE_HEADER])


def test_a_4xx_answer_fails_at_once_with_the_status_and_the_start_of_the_body(db, user, receiver):
    hook(receiver, "/status/422")
    task = create(user, "orders.created", {}, max_retries=5)

    outcome = deliver(task)

    assert outcome.status == S.FAILED and outcome.dead_letter
    assert task.attempts == 1 and task.retries == 0
    assert task.error == "The webhook answered 422 Unprocessable Entity: status 422"


def test_5xx_answers_are_retried_and_a_later_2xx_succeeds(db, user, receiver):
    hook(receiver, "/flaky/order-7/2")
    task = create(user, "orders.created", {"order_id": 7}, max_retries=3)

    assert deliver(task).status == S.RETRYING
    assert "The webhook answered 503 Service Unavailable: planned outage" in task.error
    release(task)
    assert deliver(task).status == S.RETRYING
    release(task)
    assert deliver(task).status == S.SUCCEEDED

    assert task.result == {"echo": {"order_id": 7}, "attempt": 3}
    assert [r.json["attempt"] for r in receiver.received] == [1, 2, 3]
    outcomes = TaskAttempt.objects.filter(task=task).order_by("number")
    assert [a.outcome for a in outcomes] == ["failed", "failed", "succeeded"]


def test_retry_after_on_503_and_429_sets_the_retry_wait(db, user, receiver):
    hook(receiver, "/status/503?retry_after=120", name="busy.503")
    hook(receiver, "/status/429?retry_after=30", name="busy.429")
    before = timezone.now()
    unavailable = create(user, "busy.503", {})
    throttled = create(user, "busy.429", {})

    assert deliver(unavailable).status == S.RETRYING
    assert deliver(throttled).status == S.RETRYING

    assert unavailable.run_at is not None and throttled.run_at is not None
    assert before + timedelta(seconds=119) < unavailable.run_at < before + timedelta(seconds=125)
    assert before + timedelta(seconds=29) < throttled.run_at < before + timedelta(seconds=35)


def test_retry_after_as_an_http_date():
    now = timezone.now()
    assert retry_after_seconds("Wed, 21 Oct 2065 07:28:00 GMT", now=now) == 3600  # capped
    soon = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert 88 <= (retry_after_seconds(soon, now=now) or 0) <= 90
    assert retry_after_seconds("soon") is None


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "\uff15", "1\u00b2", "-5", "1.5"])
def test_a_retry_after_that_is_not_ascii_digits_is_ignored(value):
    # "²".isdigit() is True, and float("²") raised ValueError: the attempt failed with a bug.
    assert retry_after_seconds(value) is None
    assert retry_after_seconds(" 120 ") == 120


def test_a_503_with_an_unreadable_retry_after_retries_with_the_types_backoff(db, user, receiver):
    hook(receiver, "/status/503?retry_after=%C2%B2", name="busy.503", backoff_base_seconds=1)
    before = timezone.now()
    task = create(user, "busy.503", {})

    assert deliver(task).status == S.RETRYING
    assert "503" in task.error
    assert task.run_at is not None
    assert task.run_at < before + timedelta(seconds=5)  # the backoff, not a Retry-After


def test_a_timeout_is_retried(db, user, receiver):
    hook(receiver, "/slow", timeout_seconds=0.5)
    task = create(user, "orders.created", {}, max_retries=1)

    started = time.monotonic()
    outcome = deliver(task)

    assert outcome.status == S.RETRYING
    assert time.monotonic() - started < 10
    assert "timed out" in task.error


def test_a_connection_refused_is_retried(db, user, receiver):
    hook(receiver, "/ok")
    TaskType.objects.filter(name="orders.created").update(url="http://127.0.0.1:9/ok")
    invalidate_task_types()  # a queryset update sends no signal
    task = create(user, "orders.created", {}, max_retries=1)

    assert deliver(task).status == S.RETRYING
    assert "ConnectError" in task.error


def test_a_2xx_answer_that_is_not_json_fails_clearly(db, user, receiver):
    hook(receiver, "/text")
    task = create(user, "orders.created", {}, max_retries=3)

    assert deliver(task).status == S.FAILED
    assert "The webhook answered 200, but its body is not JSON" in task.error
    assert "<html>all good</html>" in task.error
    assert task.attempts == 1


def test_204_no_content_succeeds_with_a_null_result(db, user, receiver):
    hook(receiver, "/empty")
    task = create(user, "orders.created", {})
    assert deliver(task).status == S.SUCCEEDED
    assert task.result is None


def test_a_redirect_is_not_followed(db, user, receiver):
    hook(receiver, "/redirect")
    task = create(user, "orders.created", {})
    assert deliver(task).status == S.FAILED
    assert "Redirects are not followed" in task.error
    assert [r.path for r in receiver.received] == ["/redirect"]


def test_a_wrong_signing_secret_is_refused_by_the_receiver_and_fails(db, user, receiver):
    hook(receiver, "/ok", signing_secret="not-the-receivers-secret")
    task = create(user, "orders.created", {})

    assert deliver(task).status == S.FAILED

    [request] = receiver.received
    assert not request.signature_valid
    assert task.error == 'The webhook answered 401 Unauthorized: {"error": "bad signature"}'


def test_the_ssrf_guard_applies_to_webhooks(db, user, receiver, settings):
    hook(receiver, "/ok")
    settings.SSRF_ALLOWED_NETWORKS = []
    task = create(user, "orders.created", {})

    assert deliver(task).status == S.FAILED
    assert "not a public address" in task.error
    assert receiver.received == []


def test_verify_refuses_a_changed_body_another_secret_an_old_signature_and_garbage():
    body = b'{"id":"1","type":"t","payload":{},"attempt":1}'
    header = signing.sign(SECRET, body)
    assert signing.verify(SECRET, header, body)
    assert not signing.verify(SECRET, header, body.replace(b'"attempt":1', b'"attempt":2'))
    assert not signing.verify("another secret", header, body)
    stale = signing.sign(SECRET, body, timestamp=int(time.time()) - 301)
    assert not signing.verify(SECRET, stale, body)
    for garbage in ("", "t=abc,v1=00", "v1=00", "nonsense"):
        assert not signing.verify(SECRET, garbage, body)


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(f"t={int(time.time())},v1=\u00e9", id="non-ascii-v1"),  # compare_digest raised
        pytest.param("t=" + "9" * 400 + ",v1=00", id="huge-timestamp"),  # OverflowError
        pytest.param("t=1" + "0" * 12 + ",v1=00", id="13-digit-timestamp"),
        pytest.param(f"t=\u00b2{int(time.time())},v1=00", id="non-ascii-digit"),
        pytest.param(f"t=-{int(time.time())},v1=00", id="negative"),
        pytest.param(f"t= {int(time.time())},v1=00", id="space"),
        pytest.param(f"t={int(time.time())},v1=\ud800", id="lone-surrogate"),
        pytest.param(f"t={int(time.time())},v1", id="no-equals"),
        pytest.param(f"t={int(time.time())}", id="no-v1"),
    ],
)
def test_verify_answers_false_for_a_malformed_header_and_never_raises(header):
    """A receiver copies this code from docs/handlers.md: an unauthenticated caller must get its
    401, not make it raise (a 500, a dropped connection)."""
    assert signing.verify(SECRET, signing.sign(SECRET, b"{}"), b"{}") is True
    assert signing.verify(SECRET, header, b"{}") is False


def test_the_docs_give_receivers_the_verification_code_the_tests_use():
    source = inspect.getsource(signing.verify)
    assert source in DOCS.read_text(), "docs/handlers.md must quote apps.handlers.signing.verify"


def test_payloads_are_checked_against_the_types_json_schema(db, user, receiver, api):
    hook(
        receiver,
        "/ok",
        payload_json_schema={
            "type": "object",
            "properties": {
                "order_id": {"type": "integer", "minimum": 1},
                "items": {"type": "array", "items": {"type": "object", "required": ["sku"]}},
            },
            "required": ["order_id"],
            "additionalProperties": False,
        },
    )

    response = api.post(
        "/api/tasks",
        {"type": "orders.created", "payload": {"items": [{"qty": 1}], "coupon": "X"}},
        format="json",
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["fields"] == {
        "payload.coupon": ["Unknown field (the schema allows no other fields)."],
        "payload.order_id": ["This field is required."],
        "payload.items.0.sku": ["This field is required."],
    }
    ok = api.post(
        "/api/tasks", {"type": "orders.created", "payload": {"order_id": 5}}, format="json"
    )
    assert ok.status_code == 201, ok.json()
    listed = {t["name"]: t for t in api.get("/api/task-types").json()}
    assert listed["orders.created"]["kind"] == "webhook"
    assert listed["orders.created"]["payload_schema"]["required"] == ["order_id"]
    assert listed["orders.created"]["queue"] == "io"


@pytest.mark.parametrize(
    ("schema", "too_large", "field", "within_range"),
    [
        ({"multipleOf": 0.5}, 10**400, "payload.qty", 10**300),
        ({"multipleOf": 0.5}, -(10**400), "payload.qty", -(10**300)),
        ({"items": {"multipleOf": 0.5}}, [1.5, 10**400], "payload.qty.1", [1.5, 10**300]),
    ],
    ids=["huge", "huge-negative", "in-a-list"],
)
def test_a_number_too_large_for_a_float_multipleof_is_a_400_on_the_field(
    db, receiver, api, schema, too_large, field, within_range
):
    """jsonschema divides the instance by a float divisor before its own OverflowError guard:
    10**400 / 0.5 raised OverflowError, a 500."""
    hook(receiver, "/ok", payload_json_schema={"type": "object", "properties": {"qty": schema}})

    def post(qty: Any) -> Any:
        payload = {"qty": qty}
        return api.post("/api/tasks", {"type": "orders.created", "payload": payload}, format="json")

    response = post(too_large)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "Too large a number to check against multipleOf 0.5" in str(error["fields"][field])
    assert not Task.objects.exists()
    assert post(within_range).status_code == 201


def test_the_task_row_records_nothing_of_the_secret(db, user, receiver, api):
    hook(receiver, "/ok")
    task = create(user, "orders.created", {"x": 1})
    deliver(task)
    detail = api.get(f"/api/tasks/{task.id}").json()
    assert SECRET not in str(detail)
    assert SECRET not in str(api.get("/api/task-types").json())
    assert Task.objects.filter(id=task.id, status=S.SUCCEEDED).exists()


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_real_io_worker_posts_the_task_and_stores_the_answer(user, receiver, broker, api):
    hook(receiver, "/flaky/e2e/1")  # one 503, then the answer
    with processes.running("worker-io", "beat", SSRF_ALLOWED_NETWORKS="127.0.0.0/8") as started:
        created = api.post(
            "/api/tasks", {"type": "orders.created", "payload": {"order": 1}}, format="json"
        )
        assert created.status_code == 201, created.json()
        task_id = created.json()["id"]
        wait_for(
            lambda: Task.objects.filter(id=task_id, status__in=[S.SUCCEEDED, S.FAILED]).exists(),
            timeout=60,
            what="the webhook task to finish",
        )
        logs = processes.dump_logs(started)

    task = Task.objects.get(id=task_id)
    assert task.status == S.SUCCEEDED, logs
    assert task.result == {"echo": {"order": 1}, "attempt": 2}
    assert all(r.signature_valid for r in receiver.received)
    worker = TaskAttempt.objects.get(task=task, number=2).worker
    assert worker.startswith("worker-io@")
