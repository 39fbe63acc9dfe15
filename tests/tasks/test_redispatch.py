"""A message sent again gets a new dispatch_id: never two copies of one dispatch.

The case this closes (docs/reliability.md): the first copy of a message reaches its queue after
all (its confirm was slow, or lost with its connection) and the task is published again. With the
same dispatch_id, the first copy, redelivered while the second copy's attempt ran, was taken for
a lost attempt and the handler ran twice at once.
"""

import json
import socket
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from apps.tasks import publisher, services
from apps.tasks.execution import handle_delivery
from apps.tasks.models import AttemptOutcome, Task, TaskAttempt
from apps.tasks.queues import TaskQueue
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import redispatch
from tests.support.concurrency import at_once
from tests.tasks.factories import create_task

S = TaskStatus


def _dispatches_in(message: Any) -> list[tuple[str, str]]:
    """The (task_id, dispatch_id) pairs a tasks.execute or tasks.execute_batch message carries."""
    args = json.loads(message.body)[0]
    if message.headers["task"] == "tasks.execute_batch":
        return [(task_id, dispatch_id) for task_id, dispatch_id in args[1]]
    return [(args[0], args[1])]


def _dispatch_of(message: Any) -> tuple[str, str]:
    [pair] = _dispatches_in(message)
    return pair


def _unpublished_task(user: Any, broker: Any) -> Task:
    """A queued task whose message is not in its queue, and never confirmed."""
    task = create_task(user)
    broker.purge_all()
    Task.objects.filter(id=task.id).update(published_at=None)
    task.refresh_from_db()
    return task


@pytest.mark.django_db(transaction=True)
def test_the_first_copy_of_a_republished_task_redelivered_mid_attempt_is_stale(user, broker):
    task = create_task(user, max_retries=2)
    # The first message reached the queue, but its confirm never came back (published_at unset).
    Task.objects.filter(id=task.id).update(
        published_at=None, updated_at=timezone.now() - timedelta(minutes=1)
    )
    assert services.republish_unconfirmed(older_than_seconds=0) == 1

    first, second = broker.drain(TaskQueue.DEFAULT)
    task.refresh_from_db()
    assert _dispatch_of(first)[1] != _dispatch_of(second)[1]
    assert _dispatch_of(second) == (str(task.id), str(task.dispatch_id))

    # The second copy's attempt is running (claimed, handler not finished) when the first copy
    # comes back redelivered: its worker died before handling it.
    Task.objects.filter(id=task.id).update(status=S.RUNNING, attempts=1)
    TaskAttempt.objects.create(task=task, number=1, started_at=timezone.now())
    task_id, first_dispatch = _dispatch_of(first)
    outcome = handle_delivery(
        task_id=task_id,
        dispatch_id=first_dispatch,
        task_type=task.type,
        redelivered=True,
        worker="test-worker",
    )

    assert (outcome.action, outcome.note) == ("dropped", "stale message")
    task.refresh_from_db()
    assert (task.status, task.attempts) == (S.RUNNING, 1)
    assert TaskAttempt.objects.get(task=task).outcome != AttemptOutcome.LOST


@pytest.mark.django_db(transaction=True)
def test_a_task_claimed_meanwhile_keeps_its_dispatch_and_is_not_sent_again(user, broker):
    task = create_task(user)
    dispatch = str(task.dispatch_id)
    Task.objects.filter(id=task.id).update(status=S.RUNNING, attempts=1, published_at=None)

    assert redispatch("pairs", [str(task.id)], [dispatch], limit=1) == []
    assert services.republish_unconfirmed(older_than_seconds=0) == 0
    task.refresh_from_db()
    assert str(task.dispatch_id) == dispatch


@pytest.mark.django_db(transaction=True)
def test_a_task_another_transaction_holds_is_skipped_without_waiting(user, broker):
    task = create_task(user)
    Task.objects.filter(id=task.id).update(
        published_at=None, updated_at=timezone.now() - timedelta(minutes=1)
    )
    settings_dict = connection.settings_dict
    holder = psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
    )
    try:
        # A claim in progress holds the row: its outcome decides, the republish does not wait.
        holder.execute("SELECT 1 FROM tasks_task WHERE id = %s FOR UPDATE", [task.id])
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '5s'")
            assert redispatch("unconfirmed", timezone.now(), limit=10) == []
    finally:
        holder.close()
    renewed = redispatch("unconfirmed", timezone.now(), limit=10)
    assert [t.id for t in renewed] == [task.id]


@pytest.mark.django_db(transaction=True)
def test_a_publish_whose_connection_fails_before_the_confirm_sends_a_new_dispatch(
    user, broker, monkeypatch
):
    task = _unpublished_task(user, broker)
    first_dispatch = str(task.dispatch_id)
    real_wait = publisher._ConfirmChannel.wait
    cuts: list[int] = []

    def connection_cut_before_the_confirm(self: Any, timeout: float) -> None:
        if not cuts:  # the message is written; the connection dies before its confirm is read
            cuts.append(1)
            self.channel.connection.sock.shutdown(socket.SHUT_RDWR)
        real_wait(self, timeout)

    monkeypatch.setattr(publisher._ConfirmChannel, "wait", connection_cut_before_the_confirm)
    assert publisher.publish_now([publisher.dispatch_for(task)]) == 1

    task.refresh_from_db()
    assert str(task.dispatch_id) != first_dispatch
    assert task.published_at is not None  # the second copy's confirm, for the new dispatch
    dispatches = [_dispatch_of(message)[1] for message in broker.drain(TaskQueue.DEFAULT)]
    # The first copy may have reached the queue before the cut; the copy sent again always did.
    assert dispatches[-1] == str(task.dispatch_id)
    assert set(dispatches) <= {first_dispatch, str(task.dispatch_id)}


@pytest.mark.django_db(transaction=True)
def test_concurrent_republishers_send_each_task_once(user, broker):
    tasks = [create_task(user) for _ in range(20)]
    Task.objects.filter(id__in=[t.id for t in tasks]).update(
        published_at=None, updated_at=timezone.now() - timedelta(minutes=1)
    )
    broker.purge_all()
    counts = at_once(lambda: services.republish_unconfirmed(older_than_seconds=0), 2)

    assert sum(counts) == 20
    sent = [pair for m in broker.drain(TaskQueue.DEFAULT) for pair in _dispatches_in(m)]
    current = {str(t.id): str(t.dispatch_id) for t in Task.objects.filter(owner=user)}
    assert sorted(sent) == sorted(current.items())
