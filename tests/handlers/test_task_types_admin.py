"""Task types in the admin, through Django's test client: switching types on and off, overriding
their settings, creating webhook types, and what the API and the workers then do."""

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.accounts.models import User
from apps.handlers.models import TaskType, TaskTypeKind
from apps.handlers.registry import get_task_type
from apps.handlers.selectors import invalidate_task_types
from apps.tasks import services
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver
from tests.support.processes import free_port
from tests.support.wait import wait_for
from tests.support.webhook_receiver import WebhookReceiver, webhook_receiver

S = TaskStatus
LIST = "/admin/handlers/tasktype/"
ADD = "/admin/handlers/tasktype/add/"
SECRET = "whsec-admin-test-0123456789"


@pytest.fixture
def staff(db: Any, client: Client) -> Client:
    admin = User.objects.create_superuser(email="staff@example.com", password="x" * 16)
    client.force_login(admin)
    return client


@pytest.fixture
def receiver(settings: Any) -> Iterator[WebhookReceiver]:
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.0/8"]
    with webhook_receiver(SECRET) as server:
        yield server


def change_url(name: str) -> str:
    return f"/admin/handlers/tasktype/{TaskType.objects.get(name=name).pk}/change/"


def form_post(client: Client, url: str, **changes: Any) -> Any:
    """Submit the admin form at `url` as a person would: what it shows, with `changes`."""
    form = client.get(url).context["adminform"].form
    data: dict[str, Any] = {name: form[name].value() for name in form.fields}
    data.update(changes)
    clean = {k: ("" if v is None else v) for k, v in data.items() if v is not False}
    return client.post(url, {**clean, "_save": "Save"})


def webhook_form(receiver: WebhookReceiver, **fields: Any) -> dict[str, Any]:
    return {
        "name": "invoices.paid",
        "enabled": "on",
        "description": "Marks the invoice paid in the billing service.",
        "url": receiver.url("/ok"),
        "signing_secret": SECRET,
        "timeout_seconds": "5",
        "payload_json_schema": (
            '{"type": "object", "properties": {"invoice": {"type": "string"}}, '
            '"required": ["invoice"]}'
        ),
        "queue": "",
        "rate_limit_period": "second",
        "_save": "Save",
        **fields,
    }


def test_the_list_shows_each_type_with_its_tasks_by_state_and_last_failure(
    staff, user, django_assert_max_num_queries
):
    create(user, "echo", {"n": 1})
    create(user, "echo", {"n": 2})
    failed = create(user, "test_permanent", {})
    deliver(failed)

    with django_assert_max_num_queries(12):
        page = staff.get(LIST).content.decode()

    assert "echo" in page and "long_computation" in page and "fetch_url" in page
    assert '<a href="/admin/tasks/task/?type=echo&amp;status__exact=queued">queued 2</a>' in page
    assert f'<a href="/admin/tasks/task/{failed.id}/change/">' in page
    assert "this input can never work" in page


def test_the_list_costs_the_same_queries_with_more_types(staff, user, receiver):
    def list_queries() -> int:
        invalidate_task_types()  # the same cache state for both counts
        with CaptureQueriesContext(connection) as queries:
            assert staff.get(LIST).status_code == 200
        return len(queries)

    staff.get(LIST)  # the code types' rows are synced on the first visit
    before = list_queries()
    for n in range(10):
        TaskType.objects.create(
            name=f"hook{n}", kind=TaskTypeKind.WEBHOOK, url=receiver.url("/ok"), signing_secret="s"
        )
        create(user, f"hook{n}", {})
        deliver(create(user, "test_permanent", {}))
    assert list_queries() == before


def test_staff_create_a_webhook_type_and_a_task_of_it_runs(staff, api, user, receiver):
    response = staff.post(ADD, webhook_form(receiver))
    assert response.status_code == 302, response.context["adminform"].form.errors

    row = TaskType.objects.get(name="invoices.paid")
    assert (row.kind, row.url, row.signing_secret) == ("webhook", receiver.url("/ok"), SECRET)
    listed = {t["name"]: t for t in api.get("/api/task-types").json()}
    assert listed["invoices.paid"]["payload_schema"]["required"] == ["invoice"]
    assert listed["invoices.paid"]["description"] == row.description

    refused = api.post(
        "/api/tasks", {"type": "invoices.paid", "payload": {"invoice": 7}}, format="json"
    )
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"payload.invoice": ["7 is not of type 'string'"]}

    created = api.post(
        "/api/tasks", {"type": "invoices.paid", "payload": {"invoice": "INV-7"}}, format="json"
    )
    assert created.status_code == 201, created.json()
    task = Task.objects.get(id=created.json()["id"])
    assert deliver(task).status == S.SUCCEEDED
    assert task.result == {"echo": {"invoice": "INV-7"}, "attempt": 1}
    assert receiver.received[0].signature_valid


def test_an_empty_signing_secret_gets_a_random_one(staff, receiver):
    response = staff.post(ADD, webhook_form(receiver, signing_secret=""))
    assert response.status_code == 302
    assert len(TaskType.objects.get(name="invoices.paid").signing_secret) >= 40


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"name": "echo"}, "name", "'echo' is a code type's name."),
        ({"name": "Bad Name"}, "name", "Use lowercase letters"),
        ({"url": "http://10.1.2.3/hook"}, "url", "10.1.2.3 is not a public address"),
        ({"url": "ftp://example.com/x"}, "url", "Not a valid http or https URL"),
        ({"url": ""}, "url", "A webhook type needs the URL"),
        ({"payload_json_schema": '{"type": "nonsense"}'}, "payload_json_schema", "Not a valid"),
        ({"payload_json_schema": "{not json"}, "payload_json_schema", "Enter a valid JSON."),
        ({"default_max_retries": "9", "max_retries_limit": "4"}, "default_max_retries", "More"),
        ({"max_retries_limit": "101"}, "max_retries_limit", "At most 100."),
        ({"backoff_base_seconds": "10", "backoff_cap_seconds": "5"}, "backoff_cap_seconds", "cap"),
        (
            {"backoff_base_seconds": "1e15", "backoff_cap_seconds": "1e15"},
            "backoff_base_seconds",
            "less than or equal to 2592000",
        ),
        ({"backoff_cap_seconds": "1e15"}, "backoff_cap_seconds", "less than or equal to 2592000"),
        ({"time_limit_seconds": "1790"}, "time_limit_seconds", "consumer_timeout"),
        ({"timeout_seconds": "1790"}, "timeout_seconds", "consumer_timeout"),
        ({"rate_limit_count": "0"}, "rate_limit_count", "greater than or equal to 1"),
        ({"concurrency_limit": "0"}, "concurrency_limit", "greater than or equal to 1"),
    ],
)
def test_the_webhook_form_refuses_what_could_not_work(staff, receiver, fields, field, message):
    response = staff.post(ADD, webhook_form(receiver, **fields))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert message in " ".join(errors.get(field, [])), errors
    assert not TaskType.objects.filter(kind=TaskTypeKind.WEBHOOK).exists()


def test_a_disabled_type_refuses_new_tasks_and_holds_queued_ones_until_enabled(staff, api, user):
    staff.get(LIST)
    queued = create(user, "echo", {"before": "disabling"}, max_retries=2)

    response = form_post(staff, change_url("echo"), enabled=False)
    assert response.status_code == 302

    refused = api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json")
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "task_type_disabled"
    bulk = api.post("/api/tasks/bulk", {"tasks": [{"type": "echo"}]}, format="json")
    assert (bulk.status_code, bulk.json()["error"]["code"]) == (400, "task_type_disabled")
    assert "echo" not in {t["name"] for t in api.get("/api/task-types").json()}

    outcome = deliver(queued)  # the message already in the queue
    assert (outcome.action, queued.status) == ("held", S.POSTPONED)
    assert (queued.run_at, queued.dispatch_id, queued.attempts, queued.retries) == (
        None,
        None,
        0,
        0,
    )
    assert TaskStatusChange.objects.filter(task=queued).values_list("note", flat=True).last() == (
        "held: type disabled"
    )
    assert services.release_due_tasks() == 0  # it waits for the type, not for a time

    response = form_post(staff, change_url("echo"), enabled=True)
    assert response.status_code == 302
    queued.refresh_from_db()
    assert queued.run_at is not None and queued.run_at <= timezone.now()
    assert services.release_due_tasks() == 1
    assert deliver(queued).status == S.SUCCEEDED
    assert (queued.attempts, queued.retries, queued.result) == (1, 0, {"before": "disabling"})


def test_a_type_enabled_meanwhile_runs_though_the_cache_still_says_disabled(staff, user):
    staff.get(LIST)
    task = create(user, "echo", {})
    TaskType.objects.filter(name="echo").update(enabled=False)  # no signal: caches keep "enabled"
    invalidate_task_types()
    cached = get_task_type("echo")
    assert cached is not None and cached.enabled is False  # cached now
    TaskType.objects.filter(name="echo").update(enabled=True)  # and enabled again, unseen

    assert deliver(task).status == S.SUCCEEDED
    fresh = get_task_type("echo")
    assert fresh is not None and fresh.enabled is True  # the hold's check refreshed the cache


def test_the_enable_and_disable_actions(staff, api):
    staff.get(LIST)
    pk = TaskType.objects.get(name="echo").pk
    staff.post(LIST, {"action": "disable_types", "_selected_action": [pk]})
    assert TaskType.objects.get(name="echo").enabled is False
    assert api.post("/api/tasks", {"type": "echo"}, format="json").status_code == 400
    staff.post(LIST, {"action": "enable_types", "_selected_action": [pk]})
    assert api.post("/api/tasks", {"type": "echo"}, format="json").status_code == 201


def test_overriding_a_code_types_settings_applies_to_new_tasks(staff, api, user):
    staff.get(LIST)
    page = staff.get(change_url("echo")).content.decode()
    assert "Empty: the code's default, default." in page  # the queue's help text
    assert "Empty: the platform's default, 3." in page  # default_max_retries's
    assert "url" not in staff.get(change_url("echo")).context["adminform"].form.fields

    response = form_post(
        staff,
        change_url("echo"),
        queue="io",
        default_max_retries="6",
        max_retries_limit="8",
        time_limit_seconds="120",
    )
    assert response.status_code == 302

    task = create(user, "echo", {})
    assert (task.queue, task.max_retries) == ("io", 6)
    too_many = api.post("/api/tasks", {"type": "echo", "max_retries": 9}, format="json")
    assert too_many.json()["error"]["fields"] == {
        "max_retries": ["Ensure this value is between 0 and 8."]
    }
    [echo] = [t for t in api.get("/api/task-types").json() if t["name"] == "echo"]
    assert (echo["queue"], echo["default_max_retries"], echo["time_limit_seconds"]) == (
        "io",
        6,
        120,
    )

    # Emptied again: the code's defaults come back.
    form_post(
        staff,
        change_url("echo"),
        queue="",
        default_max_retries="",
        max_retries_limit="",
        time_limit_seconds="",
    )
    assert create(user, "echo", {}).queue == "default"


def test_the_sync_adds_missing_code_types_and_keeps_staffs_edits(db):
    from apps.handlers.services import task_types_sync

    TaskType.objects.filter(name="echo").delete()
    TaskType.objects.filter(name="fetch_url").update(queue="cpu", enabled=False)

    assert "echo" in task_types_sync()
    assert task_types_sync() == []
    fetch = TaskType.objects.get(name="fetch_url")
    assert (fetch.queue, fetch.enabled) == ("cpu", False)
    assert TaskType.objects.get(name="echo").queue == ""


def test_code_types_cannot_be_deleted_webhook_types_can(staff, receiver, user):
    staff.get(LIST)
    assert staff.get(change_url("echo").replace("change", "delete")).status_code == 403
    assert "delete_selected" not in staff.get(LIST).context["action_form"].fields["action"].choices
    staff.post(ADD, webhook_form(receiver))
    held = create(user, "invoices.paid", {"invoice": "INV-1"})
    form_post(staff, change_url("invoices.paid"), enabled=False)
    assert deliver(held).action == "held"

    delete = change_url("invoices.paid").replace("change", "delete")
    assert staff.post(delete, {"post": "yes"}).status_code == 302

    assert not TaskType.objects.filter(name="invoices.paid").exists()
    # Its held task does not wait for ever: released, it fails as of an unknown type.
    assert services.release_due_tasks() == 1
    assert deliver(held).status == S.FAILED
    assert held.error == "Unknown task type 'invoices.paid': no handler registered."


def test_the_admin_says_when_rate_limits_are_not_enforced(staff, settings):
    staff.get(LIST)
    TaskType.objects.filter(name="echo").update(rate_limit_count=5)
    assert "NOT enforced" not in staff.get(LIST).content.decode()

    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    page = wait_for(lambda: staff.get(LIST).content.decode(), what="the list")
    assert "Redis does not answer: rate limits are NOT enforced now" in page
    settings.TASKFLOW = {**settings.TASKFLOW, "RATE_LIMITS_WITHOUT_REDIS": "closed"}
    page = staff.get(LIST).content.decode()
    assert "the tasks of rate-limited types are HELD until it is back" in page
    assert "NOT enforced" not in page
