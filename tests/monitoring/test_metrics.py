"""GET /metrics: who may read it, and what it says."""

from typing import Any

import pytest
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from apps.accounts.models import User
from apps.monitoring import collectors
from apps.tasks import execution
from apps.tasks.models import Task
from tests.tasks.factories import create_task

pytestmark = pytest.mark.django_db
TOKEN = "metrics-token-for-tests-0123456789"


@pytest.fixture(autouse=True)
def metrics_token(settings: Any) -> None:
    settings.METRICS_TOKEN = TOKEN
    collectors.forget_cached_state()


def scrape(client: Client | None = None, **headers: str) -> dict[tuple[str, tuple], float]:
    response = (client or Client()).get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def deliver(task: Task) -> None:
    task.refresh_from_db()
    execution.handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )


def test_metrics_need_the_token_or_a_staff_login(user):
    anonymous = Client().get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    assert anonymous["WWW-Authenticate"].startswith("Bearer")
    wrong = Client().get("/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401

    member = Client()
    member.force_login(user)
    assert member.get("/metrics").status_code == 403

    staff = User.objects.create_user(
        email="ops@example.com", password="x-y-z-123456", is_staff=True
    )
    admin = Client()
    admin.force_login(staff)
    assert admin.get("/metrics").status_code == 200


def test_no_token_configured_means_staff_only(settings, user):
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401


def test_task_counters_histograms_and_gauges(user, broker):
    for n in range(3):
        deliver(create_task(user, "echo", {"n": n}))
    deliver(create_task(user, "test_permanent", {}))
    create_task(user, "echo", {"waiting": True})
    samples = scrape()

    assert value(samples, "taskflow_tasks_created_total", type="echo") == 4
    assert value(samples, "taskflow_tasks_started_total", type="echo") == 3
    assert value(samples, "taskflow_tasks_succeeded_total", type="echo") == 3
    assert value(samples, "taskflow_tasks_failed_total", type="test_permanent") == 1
    assert value(samples, "taskflow_tasks_retried_total", type="echo") == 0
    assert value(samples, "taskflow_tasks", type="echo", status="queued") == 1
    assert value(samples, "taskflow_tasks", type="echo", status="succeeded") == 3
    # Histograms: cumulative buckets ending in +Inf, with _count and _sum.
    assert value(samples, "taskflow_task_run_seconds_count", type="echo") == 3
    assert value(samples, "taskflow_task_run_seconds_bucket", type="echo", le="+Inf") == 3
    assert value(samples, "taskflow_task_run_seconds_bucket", type="echo", le="5000.0") == 3
    assert value(samples, "taskflow_task_queue_wait_seconds_count", type="echo") == 3
    assert value(samples, "taskflow_database_up") == 1


def test_queue_depths_consumers_and_workers(user, broker):
    broker.channel.basic_publish(
        broker.channel.prepare_message(b"{}"), exchange="", routing_key="cpu"
    )
    samples = scrape()
    assert value(samples, "taskflow_broker_up") == 1
    assert value(samples, "taskflow_queue_messages", queue="cpu") == 1
    assert value(samples, "taskflow_queue_messages", queue="taskflow.deadletter") == 0
    assert value(samples, "taskflow_queue_consumers", queue="default") == 0
    assert value(samples, "taskflow_workers_online") == 0
    assert value(samples, "taskflow_queue_workers", queue="default") == 0


def test_http_requests_are_counted_by_route_and_status(api, user):
    before = scrape()
    for _ in range(3):
        assert api.get("/api/tasks").status_code == 200
    assert api.get("/api/tasks/00000000-0000-0000-0000-000000000000").status_code == 404
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

    ok = {"route": "task-list", "method": "GET", "status": "200"}
    assert delta("taskflow_http_requests_total", **ok) == 3
    assert delta("taskflow_http_request_duration_seconds_count", **ok) == 3
    missing = {"route": "task-detail", "method": "GET", "status": "404"}
    assert delta("taskflow_http_requests_total", **missing) == 1
