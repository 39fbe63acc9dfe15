"""The row commits first, the message follows; a message the broker never took is sent again."""

from typing import Any

import pytest
from rest_framework.test import APIClient

from apps.tasks import services
from apps.tasks.models import Task
from apps.tasks.queues import TaskQueue
from apps.tasks.states import TaskStatus
from taskflow.celery import app as celery_app
from tests.support.broker import use_broker
from tests.tasks.factories import create_task

S = TaskStatus
CLOSED_PORT_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def broker_down(settings: Any) -> Any:
    """Point publishing at a port where nothing listens, as if RabbitMQ were down."""
    real = celery_app.conf.broker_url
    use_broker(CLOSED_PORT_BROKER)

    def restore() -> None:
        use_broker(real)

    yield restore
    restore()


def test_nothing_is_published_before_commit(user, broker, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        task = create_task(user)
    assert len(callbacks) == 1
    assert broker.depth(TaskQueue.DEFAULT) == 0
    task.refresh_from_db()
    assert task.published_at is None
    for callback in callbacks:
        callback()
    task.refresh_from_db()
    assert task.published_at is not None
    assert broker.depth(TaskQueue.DEFAULT) == 1


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_create_publishes_nothing(user, broker):
    from django.db import transaction

    def create_then_fail() -> None:
        with transaction.atomic():
            create_task(user)
            raise RuntimeError("the request failed after creating the task")

    with pytest.raises(RuntimeError):
        create_then_fail()
    assert not Task.objects.exists()
    assert broker.depth(TaskQueue.DEFAULT) == 0


@pytest.mark.django_db(transaction=True)
def test_broker_down_at_create_then_back_the_task_is_published_again(user, broker, broker_down):
    api = APIClient()
    api.force_authenticate(user)
    response = api.post("/api/tasks", {"type": "echo", "payload": {"n": 1}}, format="json")
    assert response.status_code == 201, response.content  # the API does not fail with the broker
    task = Task.objects.get(id=response.json()["id"])
    assert task.status == S.QUEUED
    assert task.published_at is None

    broker_down()  # RabbitMQ is back
    assert services.republish_unconfirmed(older_than_seconds=0) == 1
    task.refresh_from_db()
    assert task.published_at is not None
    message = broker.get(TaskQueue.DEFAULT)
    assert message is not None
    assert message.headers["id"] == str(task.dispatch_id)
    assert services.republish_unconfirmed(older_than_seconds=0) == 0


@pytest.mark.django_db(transaction=True)
def test_a_confirmed_message_that_vanished_is_published_again(user, broker):
    task = create_task(user)
    task.refresh_from_db()
    assert task.published_at is not None
    assert broker.depth(TaskQueue.DEFAULT) == 1
    broker.channel.queue_purge(TaskQueue.DEFAULT.value)  # someone purged the queue

    assert services.republish_lost(older_than_seconds=0) == 1
    message = broker.get(TaskQueue.DEFAULT)
    assert message.headers["id"] == str(task.dispatch_id)


@pytest.mark.django_db(transaction=True)
def test_tasks_behind_a_backlog_are_not_published_again(user, broker):
    first = create_task(user)
    create_task(user)
    assert broker.depth(TaskQueue.DEFAULT) == 2
    broker.get(TaskQueue.DEFAULT)  # one message gone, the other still waits in the queue
    assert services.republish_lost(older_than_seconds=0) == 0
    first.refresh_from_db()
    assert first.status == S.QUEUED
