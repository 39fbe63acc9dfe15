"""RabbitMQ goes away (a TCP proxy cuts it off) while tasks are created and while they run."""

from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from apps.tasks import publisher
from apps.tasks.models import AttemptOutcome, Task, TaskAttempt
from apps.tasks.states import TaskStatus
from taskflow.celery import app as celery_app
from tests.reliability.conftest import all_final, assert_each_succeeded_once, marker_runs
from tests.support import processes
from tests.support.broker import use_broker
from tests.support.tcpproxy import TcpProxy
from tests.support.wait import wait_for

pytestmark = [pytest.mark.django_db(transaction=True)]
S = TaskStatus


@pytest.fixture
def rabbit_proxy(rabbitmq_vhost: str) -> Any:
    with TcpProxy("127.0.0.1", 5672) as proxy:
        yield proxy


def test_tasks_created_while_the_broker_is_cut_off_run_once_it_is_back(
    user, broker, rabbit_proxy, rabbitmq_vhost
):
    api = APIClient()
    api.force_authenticate(user)
    real_url = celery_app.conf.broker_url
    use_broker(rabbit_proxy.url_for(real_url))
    try:
        created = []
        for n in range(150):
            if n == 50:
                rabbit_proxy.cut()  # mid-stream: a pooled connection dies under the publisher
            response = api.post("/api/tasks", {"type": "echo", "payload": {"n": n}}, format="json")
            assert response.status_code == 201, response.content
            created.append(response.json()["id"])
        unpublished = Task.objects.filter(id__in=created, published_at__isnull=True).count()
        assert unpublished == 100
        rabbit_proxy.restore()
    finally:
        use_broker(real_url)

    # Workers and beat (on the real broker): the releaser publishes the unconfirmed ones again.
    with processes.running("worker", "beat", WORKER_CONCURRENCY="2"):
        all_final(created)
    assert_each_succeeded_once(created)
    assert not TaskAttempt.objects.filter(task_id__in=created).exclude(number=1).exists()


def test_a_bulk_whose_broker_is_cut_off_mid_publish_runs_once_it_is_back(
    user, broker, rabbit_proxy, rabbitmq_vhost, monkeypatch
):
    """The connection dies in the middle of a 1000-task bulk: what the broker did not
    confirm stays unpublished, and the releaser publishes it again."""
    api = APIClient()
    api.force_authenticate(user)
    sent = publisher._ConfirmChannel.sent
    published = 0

    def cut_at_the_400th(self: Any, message: Any) -> None:
        nonlocal published
        before, published = published, published + len(message)  # echo: 16 tasks a message
        if before < 400 <= published:
            rabbit_proxy.cut()
        sent(self, message)

    monkeypatch.setattr(publisher._ConfirmChannel, "sent", cut_at_the_400th)
    real_url = celery_app.conf.broker_url
    use_broker(rabbit_proxy.url_for(real_url))
    try:
        items = [{"type": "echo", "payload": {"n": n}} for n in range(1000)]
        response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
        assert response.status_code == 201, response.content
        created = response.json()["ids"]
        unpublished = Task.objects.filter(id__in=created, published_at__isnull=True).count()
        assert unpublished >= 600  # at least every message after the cut
        rabbit_proxy.restore()
    finally:
        use_broker(real_url)
        monkeypatch.undo()

    with processes.running("worker", "beat", WORKER_CONCURRENCY="2"):
        all_final(created, timeout=240)
    assert_each_succeeded_once(created)


def test_workers_reconnect_by_themselves_after_the_broker_is_cut_off(
    user, broker, rabbit_proxy, rabbitmq_vhost, marker
):
    from tests.tasks.factories import create_task

    worker_env = processes.test_environment(
        CELERY_BROKER_URL=rabbit_proxy.url_for(rabbitmq_vhost), WORKER_CONCURRENCY="2"
    )
    worker = processes.start("worker", env=worker_env)
    try:
        with processes.running("beat"):
            tasks = [
                create_task(user, "test_sleep", {"seconds": 0.05, "marker": str(marker)})
                for _ in range(200)
            ]
            ids = [t.id for t in tasks]
            wait_for(
                lambda: Task.objects.filter(id__in=ids, status=S.SUCCEEDED).count() >= 20,
                what="the first tasks to run",
            )
            rabbit_proxy.cut()
            wait_for(
                lambda: "Connection to broker lost" in worker.log(), what="the worker to notice"
            )
            rabbit_proxy.restore()
            all_final(ids, timeout=180)
    finally:
        worker.stop()
    assert_each_succeeded_once(ids)
    # Any second run of a handler is an attempt the broker took back (counted as lost).
    runs = marker_runs(marker)
    rerun = {task_id for task_id, count in runs.items() if count > 1}
    lost = set(
        TaskAttempt.objects.filter(task_id__in=ids, outcome=AttemptOutcome.LOST).values_list(
            "task_id", flat=True
        )
    )
    assert {str(t) for t in lost} >= rerun
    assert rabbit_proxy.connections_made >= 2  # it did reconnect


def test_settings_point_at_the_real_broker_again(rabbitmq_vhost):
    assert rabbitmq_vhost == settings.CELERY_BROKER_URL
    assert celery_app.conf.broker_url == rabbitmq_vhost
