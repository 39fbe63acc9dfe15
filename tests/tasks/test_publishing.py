"""The row commits first, the message follows; a message the broker never took is sent again."""

import dataclasses
import runpy
import subprocess
import threading
import uuid
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from apps.handlers.registry import RateLimit
from apps.tasks import publisher, services
from apps.tasks.models import Task
from apps.tasks.publisher import Dispatch
from apps.tasks.queues import TaskQueue
from apps.tasks.states import TaskStatus
from taskflow.celery import app as celery_app
from tests.support.broker import tasks_in, use_broker
from tests.support.wait import wait_for
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
    first_dispatch = task.dispatch_id

    assert services.republish_lost(older_than_seconds=0) == 1
    task.refresh_from_db()
    # A new dispatch: had the first copy been held somewhere after all, it is stale now.
    assert task.dispatch_id != first_dispatch
    assert task.published_at is not None  # the new copy's confirm
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


# --- batched publishing with publisher confirms ----------------------------------------------


def _dispatches(count: int, *, queue: str = "default", **fields: Any) -> list[Dispatch]:
    return [
        Dispatch(task_id=uuid.uuid4(), dispatch_id=uuid.uuid4(), queue=queue, **fields)
        for _ in range(count)
    ]


def _as_received(message: Any) -> tuple[Any, ...]:
    properties = dict(message.properties)
    return (
        message.body,
        properties,
        message.delivery_info["exchange"],
        message.delivery_info["routing_key"],
    )


def _send_with_celery(dispatch: Dispatch, **limits: Any) -> None:
    """What Celery itself sends for `dispatch` (on the io queue), to compare ours with."""
    from apps.tasks.tasks import execute

    execute.apply_async(
        args=[str(dispatch.task_id), str(dispatch.dispatch_id), dispatch.task_type],
        task_id=str(dispatch.dispatch_id),
        queue="io",
        routing_key="io",
        **limits,
    )


@pytest.mark.parametrize("time_limit", [None, 60])
def test_a_batched_message_is_what_apply_async_sends(broker, time_limit):
    """Byte for byte: the worker cannot tell the batch publisher from Celery's apply_async."""

    dispatch = _dispatches(1, queue="io", time_limit_seconds=time_limit, task_type="echo")[0]
    options: dict[str, Any] = {}
    if time_limit:
        options = {"soft_time_limit": time_limit + 5, "time_limit": time_limit + 30}
    _send_with_celery(dispatch, **options)
    assert publisher.publish([dispatch]) == [dispatch]
    celery_sent, ours = broker.get(TaskQueue.IO), broker.get(TaskQueue.IO)
    assert _as_received(ours) == _as_received(celery_sent)
    assert ours.headers["timelimit"] == (
        [time_limit + 30, time_limit + 5]
        if time_limit
        else [settings.CELERY_TASK_TIME_LIMIT, settings.CELERY_TASK_SOFT_TIME_LIMIT]
    )


@pytest.mark.django_db
def test_every_message_of_a_mixed_batch_is_what_apply_async_sends(broker):
    """The batch publisher fills one message template per kind (queue, time limit, type) with
    each dispatch's ids: every message is still apply_async's, with its own ids."""

    batch = [
        *_dispatches(2, queue="io", task_type="send_email"),
        *_dispatches(1, queue="io", time_limit_seconds=60, task_type="fetch_url"),
        *_dispatches(2, queue="io", task_type="long_computation"),
    ]
    for dispatch in batch:
        limits: dict[str, Any] = {}
        if dispatch.time_limit_seconds:
            limits = {"soft_time_limit": 65, "time_limit": 90}
        _send_with_celery(dispatch, **limits)
    assert publisher.publish(batch) == batch
    celery_sent = [broker.get(TaskQueue.IO) for _ in batch]
    ours = [broker.get(TaskQueue.IO) for _ in batch]
    assert [_as_received(m) for m in ours] == [_as_received(m) for m in celery_sent]
    assert [m.headers["id"] for m in ours] == [str(d.dispatch_id) for d in batch]


def test_a_template_is_made_once_per_kind_and_thread_and_kept_across_publishes(broker, monkeypatch):
    """A single create publishes one message: its template is kept with the channel for the next
    create of the kind, in the same thread (Celery's reply_to is per thread), and every message is
    still apply_async's from that thread, with its own ids."""

    made: list[threading.Thread] = []

    class CountedTemplate(publisher._MessageTemplate):
        def __init__(self, *args: Any) -> None:
            made.append(threading.current_thread())
            super().__init__(*args)

    monkeypatch.setattr(publisher, "_MessageTemplate", CountedTemplate)
    for _, confirms in list(publisher._confirm_channels.values()):
        confirms.templates.clear()  # those of earlier tests

    def send_both_ways(dispatch: Dispatch) -> None:
        _send_with_celery(dispatch)
        assert publisher.publish([dispatch]) == [dispatch]

    first, second, third = _dispatches(3, queue="io", task_type="echo")
    send_both_ways(first)
    send_both_ways(second)
    assert len(made) == 1
    other = threading.Thread(target=send_both_ways, args=(third,))
    other.start()
    other.join()
    assert made == [threading.current_thread(), other]

    by_id: dict[str, list[Any]] = {}
    for _ in range(6):
        message = broker.get(TaskQueue.IO)
        by_id.setdefault(message.headers["id"], []).append(message)
    assert set(by_id) == {str(d.dispatch_id) for d in (first, second, third)}
    for celery_sent, ours in by_id.values():
        assert _as_received(ours) == _as_received(celery_sent)
    reply_to = {key: messages[0].properties["reply_to"] for key, messages in by_id.items()}
    assert reply_to[str(first.dispatch_id)] == reply_to[str(second.dispatch_id)]
    assert reply_to[str(third.dispatch_id)] != reply_to[str(first.dispatch_id)]


@pytest.mark.django_db(transaction=True)
def test_a_batch_is_confirmed_and_marked_in_one_update(user, broker, django_assert_num_queries):
    tasks = [create_task(user) for _ in range(3)]
    broker.purge_all()
    Task.objects.update(published_at=None)
    dispatches = [publisher.dispatch_for(t) for t in tasks] + _dispatches(1200)
    with django_assert_num_queries(1):
        assert publisher.publish_now(dispatches) == 1203  # more than one confirm window
    assert broker.depth(TaskQueue.DEFAULT) == 1 + 1200  # the three echo tasks share a message
    assert not Task.objects.filter(published_at__isnull=True).exists()


def _send_batch_with_celery(batch: list[Dispatch], *, queue: str, **limits: Any) -> None:
    from apps.tasks.tasks import execute_batch

    execute_batch.apply_async(
        args=[batch[0].task_type, [[str(d.task_id), str(d.dispatch_id)] for d in batch]],
        argsrepr=publisher.batch_argsrepr(batch[0].task_type, len(batch)),
        task_id=str(batch[0].dispatch_id),
        queue=queue,
        routing_key=queue,
        **limits,
    )


@pytest.mark.django_db
def test_a_type_with_a_batch_size_shares_messages_that_are_what_apply_async_sends(broker):
    """echo has batch_size 16 and a 30 s limit: 35 of its dispatches published together are
    messages of 16, 16 and 3 tasks (each limited to 30 s per task), in the order given; the others
    keep a message each. Every message is byte for byte execute_batch.apply_async's."""
    echo = _dispatches(35, queue="io", time_limit_seconds=30, task_type="echo")
    other = _dispatches(2, queue="io", task_type="send_email")
    batches = [echo[:16], echo[16:32], echo[32:]]
    for batch in batches:
        tasks = len(batch)
        _send_batch_with_celery(
            batch, queue="io", soft_time_limit=30 * tasks + 5, time_limit=30 * tasks + 30
        )
    for dispatch in other:
        _send_with_celery(dispatch)
    assert sorted(map(str, publisher.publish([*echo[:10], other[0], *echo[10:], other[1]]))) == (
        sorted(map(str, echo + other))
    )
    celery_sent = [broker.get(TaskQueue.IO) for _ in range(5)]
    ours = [broker.get(TaskQueue.IO) for _ in range(5)]
    assert broker.get(TaskQueue.IO) is None
    by_id = {m.headers["id"]: m for m in ours}
    assert [m.headers["task"] for m in celery_sent[:3]] == ["tasks.execute_batch"] * 3
    assert [_as_received(by_id[m.headers["id"]]) for m in celery_sent] == [
        _as_received(m) for m in celery_sent
    ]
    assert by_id[str(echo[32].dispatch_id)].headers["timelimit"] == [3 * 30 + 30, 3 * 30 + 5]


def test_a_batch_size_needs_a_time_limit_and_stays_under_the_consumer_timeout(settings):
    from apps.handlers.registry import code_task_types, handler

    with pytest.raises(ValueError, match="needs time_limit_seconds"):
        handler("batched_without_limit", batch_size=4)
    echo = code_task_types()["echo"]
    assert echo.message_batch_size == 16
    settings.TASKFLOW = {**settings.TASKFLOW, "MESSAGE_BATCH_MAX": 5}
    assert echo.message_batch_size == 5
    settings.TASKFLOW = {**settings.TASKFLOW, "RABBITMQ_CONSUMER_TIMEOUT_SECONDS": 131}
    assert echo.message_batch_size == 3  # 3 x 30 s + 30 s of margin < 131 s
    assert dataclasses.replace(echo, rate_limit=RateLimit.parse("5/s")).message_batch_size == 1
    assert dataclasses.replace(echo, concurrency_limit=2).message_batch_size == 1
    assert dataclasses.replace(echo, enabled=False).message_batch_size == 1


@pytest.fixture
def queue_holding_two(rabbitmq_vhost: str) -> Any:
    """A RabbitMQ policy: `default` takes 2 messages and refuses (nacks) what comes after."""
    vhost = rabbitmq_vhost.rsplit("/", 1)[1]
    policy = ["-p", vhost, "taskflow-test-maxlen"]
    subprocess.run(
        [
            "rabbitmqctl",
            "-q",
            "set_policy",
            *policy,
            "^default$",
            '{"max-length": 2, "overflow": "reject-publish"}',
            "--apply-to",
            "queues",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield
    subprocess.run(
        ["rabbitmqctl", "-q", "clear_policy", *policy], check=True, capture_output=True, timeout=60
    )


@pytest.mark.django_db(transaction=True)
def test_nacked_messages_stay_unpublished_and_are_published_again(
    user, broker, queue_holding_two, settings
):
    settings.TASKFLOW = {**settings.TASKFLOW, "MESSAGE_BATCH_MAX": 1}  # a message per echo task

    def applied() -> bool:  # policies apply asynchronously
        publisher.publish(_dispatches(3))
        return broker.depth(TaskQueue.DEFAULT) == 2

    wait_for(applied, what="the max-length policy")
    broker.purge_all()
    tasks = [create_task(user) for _ in range(5)]  # each published on its own: 2 taken
    assert Task.objects.filter(published_at__isnull=False).count() == 2
    broker.purge_all()
    Task.objects.update(published_at=None)

    assert publisher.publish_now([publisher.dispatch_for(t) for t in tasks]) == 2
    assert Task.objects.filter(published_at__isnull=True).count() == 3  # the nacked ones
    broker.purge_all()
    assert services.republish_unconfirmed(older_than_seconds=0) == 2
    assert Task.objects.filter(published_at__isnull=True).count() == 1


@pytest.fixture
def marks_in_a_thread() -> Any:
    """As in a gunicorn worker (taskflow/gunicorn.conf.py): published_at written by a thread."""
    publisher.marks.start()
    yield publisher.marks
    publisher.marks.stop()


@pytest.mark.django_db(transaction=True)
def test_a_web_process_marks_published_off_the_request(user, broker, marks_in_a_thread):
    api = APIClient()
    api.force_authenticate(user)
    response = api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json")
    assert response.status_code == 201
    items = [{"type": "echo", "payload": {"n": n}} for n in range(20)]
    assert api.post("/api/tasks/bulk", {"tasks": items}, format="json").status_code == 201
    # Confirmed before the answer; the bulk's 20 echo tasks go up to 16 to a message.
    assert broker.depth(TaskQueue.DEFAULT) == 1 + 2
    wait_for(
        lambda: not Task.objects.filter(published_at__isnull=True).exists(),
        what="the thread to mark 21 tasks published",
    )


@pytest.mark.django_db(transaction=True)
def test_flushing_the_marks_writes_them_now(user, broker, marks_in_a_thread):
    tasks = [create_task(user) for _ in range(2)]  # marked later, by the thread
    marks_in_a_thread.flush()  # waits for a flush the thread may have begun
    assert not Task.objects.filter(published_at__isnull=True).exists()
    assert {t.id for t in tasks} == set(Task.objects.values_list("id", flat=True))


@pytest.mark.django_db(transaction=True)
def test_the_first_publish_declares_its_queue_with_dead_lettering(user, fresh_vhost):
    """Into a broker where nothing is declared yet (workers not started, setup_broker not run),
    a create declares its queue as the workers would, once per connection, and nothing is lost."""
    from tests.support.broker import rabbitmqctl

    def queues() -> dict[str, tuple[str, str]]:
        out = rabbitmqctl(
            "list_queues", "-p", fresh_vhost, "name", "arguments", "messages", "--no-table-headers"
        )
        return {row[0]: (row[1], row[2]) for row in (ln.split("\t") for ln in out.splitlines())}

    assert queues() == {}
    for number in range(3):
        services.task_create(owner=user, type="echo", payload={"n": number})

    declared = wait_for(lambda: queues().get(TaskQueue.DEFAULT.value), what="the queue")
    assert declared is not None
    assert "taskflow.dlx" in declared[0]  # x-dead-letter-exchange, as apps.tasks.queues declares
    wait_for(lambda: queues()[TaskQueue.DEFAULT.value][1] == "3", what="the three messages")


@pytest.fixture
def publishing_in_a_thread() -> Any:
    """As in a gunicorn worker: the creates' messages published by a thread, marks by another."""
    publisher.marks.start()
    publisher.request_publishing.start()
    yield publisher.request_publishing
    publisher.request_publishing.stop()
    publisher.marks.stop()


def _all_marked() -> bool:
    return not Task.objects.filter(published_at__isnull=True).exists()


@pytest.mark.django_db(transaction=True)
def test_a_web_process_publishes_the_creates_off_the_request(user, broker, publishing_in_a_thread):
    api = APIClient()
    api.force_authenticate(user)
    with publishing_in_a_thread._flushing:  # the thread is busy publishing
        for n in range(3):
            response = api.post("/api/tasks", {"type": "echo", "payload": {"n": n}}, format="json")
            assert response.status_code == 201  # answered without waiting for the broker
        assert broker.depth(TaskQueue.DEFAULT) == 0
    wait_for(_all_marked, what="the threads to publish and mark the three tasks")
    # What the requests committed meanwhile went out in one publish: echo shares messages.
    [message] = broker.drain(TaskQueue.DEFAULT)
    assert sorted(tasks_in(message)) == sorted(
        str(i) for i in Task.objects.values_list("id", flat=True)
    )


@pytest.mark.django_db(transaction=True)
def test_a_worker_exit_publishes_and_marks_what_the_threads_hold(
    user, broker, publishing_in_a_thread
):

    worker_exit = runpy.run_path("taskflow/gunicorn.conf.py")["worker_exit"]
    with publishing_in_a_thread._flushing:
        tasks = [create_task(user) for _ in range(2)]
        exiting = threading.Thread(target=worker_exit, args=(None, None))
        exiting.start()
    exiting.join(timeout=30)
    assert not exiting.is_alive()
    assert _all_marked()  # by the time the hook returns
    assert sorted(broker.task_ids(TaskQueue.DEFAULT)) == sorted(str(t.id) for t in tasks)
    assert not publisher.request_publishing.enabled
    assert not publisher.marks.enabled


@pytest.mark.django_db(transaction=True)
def test_a_create_the_thread_could_not_publish_is_published_again(
    user, broker, broker_down, publishing_in_a_thread
):
    api = APIClient()
    api.force_authenticate(user)
    response = api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json")
    assert response.status_code == 201
    publishing_in_a_thread.flush()  # waits for the thread's attempt, which the broker refused
    task = Task.objects.get(id=response.json()["id"])
    assert task.published_at is None

    broker_down()  # RabbitMQ is back
    assert services.republish_unconfirmed(older_than_seconds=0) == 1
    assert broker.task_ids(TaskQueue.DEFAULT) == [str(task.id)]
