"""GET /api/stats, and staff's task look-up and retry."""

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from apps.accounts.models import User
from apps.monitoring import api as monitoring_api
from apps.monitoring import collectors
from apps.tasks import execution
from apps.tasks.models import Task
from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME
from tests.conftest import client_for
from tests.tasks.factories import create_task

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(db: Any) -> User:
    """Staff who may operate tasks (retry, cancel), as the admin's actions require."""
    user = User.objects.create_user(
        email="ops@example.com", password="correct-horse-battery", is_staff=True
    )
    user.user_permissions.add(Permission.objects.get(codename="change_task"))
    return user


@pytest.fixture
def staff_api(staff: User) -> Any:
    return client_for(staff)


@pytest.fixture(autouse=True)
def fresh_cache() -> Any:
    collectors.forget_cached_state()
    cache.delete(monitoring_api._staff_stats_key())
    yield
    collectors.forget_cached_state()
    cache.delete(monitoring_api._staff_stats_key())


def deliver(task: Task) -> str:
    task.refresh_from_db()
    return (
        execution.handle_delivery(
            task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
        ).status
        or ""
    )


def make_history(user: User, other_user: User) -> None:
    deliver(create_task(user, "echo", {"n": 1}))
    deliver(create_task(user, "test_permanent", {}))
    create_task(user, "echo", {"n": 2})
    deliver(create_task(other_user, "echo", {"n": 3}))
    deliver(create_task(other_user, "test_permanent", {}))


def test_a_user_sees_only_their_own_tasks(api, user, other_user):
    make_history(user, other_user)
    response = api.get("/api/stats")
    assert response.status_code == 200
    body = response.json()
    assert body["scope"] == "own"
    assert body["total"] == 3
    assert body["counts"]["succeeded"] == 1
    assert body["counts"]["failed"] == 1
    assert body["counts"]["queued"] == 1
    assert set(body["counts"]) == {
        "postponed",
        "queued",
        "running",
        "retrying",
        "succeeded",
        "failed",
        "cancelled",
    }
    by_type = {item["type"]: item for item in body["types"]}
    assert by_type["echo"]["total"] == 2
    assert by_type["echo"]["last_hour"]["succeeded"] == 1
    assert by_type["echo"]["last_hour"]["created"] == 2
    assert by_type["test_permanent"]["last_hour"]["failed"] == 1
    assert by_type["echo"]["run_seconds"]["count"] == 1
    assert by_type["echo"]["run_seconds"]["p50"] is not None
    assert by_type["echo"]["queue_wait_seconds"]["p99"] is not None
    # The last hour, minute by minute, with this minute's finished tasks at the end.
    assert len(body["throughput"]) == 60
    assert sum(p["succeeded"] for p in body["throughput"]) == 1
    assert sum(p["failed"] for p in body["throughput"]) == 1
    assert [f["owner"] for f in body["recent_failures"]] == [user.email]
    assert body["recent_failures"][0]["error"] == "this input can never work"
    # The broker and the workers are for staff.
    assert "queues" not in body
    assert "workers" not in body


def test_staff_see_everyone_and_the_broker(staff_api, user, other_user, broker):
    make_history(user, other_user)
    broker.channel.basic_publish(
        broker.channel.prepare_message(b"{}"), exchange="", routing_key=DEAD_LETTER_QUEUE_NAME
    )
    body = staff_api.get("/api/stats").json()
    assert body["scope"] == "all"
    assert body["total"] == 5
    assert body["counts"]["failed"] == 2
    assert {f["owner"] for f in body["recent_failures"]} == {user.email, other_user.email}
    queues = {q["name"]: q for q in body["queues"]}
    assert set(queues) == {"default", "io", "cpu", "maintenance", DEAD_LETTER_QUEUE_NAME}
    assert queues[DEAD_LETTER_QUEUE_NAME]["messages"] == 1
    assert queues["default"]["consumers"] == 0
    assert body["workers"] == []  # none runs in this test (the e2e tests start some)
    assert "broker_error" not in body


def test_stats_need_a_login(anon):
    response = anon.get("/api/stats")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_stats_read_a_few_rows_whatever_the_number_of_tasks(api, user, other_user):
    make_history(user, other_user)
    with CaptureQueriesContext(connection) as queries:
        assert api.get("/api/stats").status_code == 200
    sql = "\n".join(q["sql"] for q in queries.captured_queries)
    # user, counts, throughput, window events, running, failures: no count over tasks_task.
    assert len(queries.captured_queries) <= 7, sql
    assert "COUNT(*)" not in sql.upper().replace("COUNT(*) FILTER", "")


def test_staff_stats_are_computed_once_for_everyone_for_a_moment(staff_api, user, broker):
    create_task(user, "echo", {})
    assert staff_api.get("/api/stats").json()["total"] == 1
    create_task(user, "echo", {})
    with CaptureQueriesContext(connection) as queries:
        cached = staff_api.get("/api/stats").json()
    assert cached["total"] == 1  # the cached answer (STAFF_STATS_CACHE_SECONDS)
    assert not any("monitoring_" in q["sql"] for q in queries.captured_queries)


def test_staff_find_and_retry_anyones_task(staff_api, api, user):
    task = create_task(user, "test_permanent", {})
    deliver(task)
    found = staff_api.get(f"/api/monitoring/tasks/{task.id}")
    assert found.status_code == 200
    assert found.json()["owner"] == user.email
    assert found.json()["status"] == "failed"
    assert [a["outcome"] for a in found.json()["attempts"]] == ["failed"]

    retried = staff_api.post(f"/api/monitoring/tasks/{task.id}/retry")
    assert retried.status_code == 200
    assert retried.json()["status"] == "queued"
    task.refresh_from_db()
    assert task.status_changes.filter(note="retried by hand").exists()

    # Only a failed or cancelled task.
    again = staff_api.post(f"/api/monitoring/tasks/{task.id}/retry")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "task_not_retryable"


def test_retrying_needs_the_permission_the_admin_asks_for_its_actions(user):
    # Staff without tasks.change_task may look a task up, but not retry it: the admin does not
    # offer them its retry action either.
    viewer = User.objects.create_user(email="viewer@example.com", is_staff=True)
    viewer_api = client_for(viewer)
    task = create_task(user, "test_permanent", {})
    deliver(task)
    assert viewer_api.get(f"/api/monitoring/tasks/{task.id}").status_code == 200
    refused = viewer_api.post(f"/api/monitoring/tasks/{task.id}/retry")
    assert refused.status_code == 403
    assert "tasks.change_task" in refused.json()["error"]["message"]
    task.refresh_from_db()
    assert task.status == "failed"


def test_the_staff_task_endpoints_are_for_staff(api, staff_api, user):
    task = create_task(user, "echo", {})
    assert api.get(f"/api/monitoring/tasks/{task.id}").status_code == 403
    assert api.post(f"/api/monitoring/tasks/{task.id}/retry").status_code == 403
    missing = staff_api.get("/api/monitoring/tasks/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "task_not_found"


def test_the_admin_task_page_follows_an_unfinished_task_live(staff, user, client):
    from django.contrib.auth.models import Permission

    staff.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.force_login(staff)
    waiting = create_task(user, "echo", {})
    page = client.get(f"/admin/tasks/task/{waiting.id}/change/")
    assert page.status_code == 200
    assert b'id="task-live"' in page.content
    assert f"/api/monitoring/tasks/{waiting.id}".encode() in page.content

    deliver(waiting)
    finished = client.get(f"/admin/tasks/task/{waiting.id}/change/")
    assert finished.status_code == 200
    assert b'id="task-live"' not in finished.content


# --- hostile query strings ------------------------------------------------------------------------


@pytest.mark.parametrize("refresh", ["%00", "%C2%B2", "99999999999999999999999", "-5", "abc"])
def test_the_dashboard_takes_any_refresh_value_without_a_500(staff, client, refresh):
    """A NUL is refused like anywhere in the admin (apps.core.middleware); the rest fall back to
    the default or are clamped to 1..60."""
    client.force_login(staff)
    client.raise_request_exception = False
    response = client.get(f"/admin/dashboard/?refresh={refresh}")
    if refresh == "%00":
        assert response.status_code == 400
    else:
        assert response.status_code == 200
        assert 1 <= response.context["refresh_seconds"] <= 60


def test_the_monitoring_api_ignores_a_nul_in_the_query_string(staff_api, user, settings):
    """None of /api/stats, /metrics, /api/monitoring/tasks/{id} reads its query string."""
    settings.METRICS_TOKEN = "m" * 32
    task = create_task(user, "echo", {})
    assert staff_api.get("/api/stats?scope=%00&%00=1").status_code == 200
    assert staff_api.get(f"/api/monitoring/tasks/{task.id}?x=%00").status_code == 200
    metrics = Client().get("/metrics?x=%00", HTTP_AUTHORIZATION=f"Bearer {'m' * 32}")
    assert metrics.status_code == 200
