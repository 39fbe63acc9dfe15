"""Execution through real RabbitMQ and real `celery worker` processes (the Procfile's commands)."""

import signal
from pathlib import Path
from typing import Any

import pytest

from apps.tasks import publisher, services
from apps.tasks.execution import handle_delivery
from apps.tasks.models import AttemptOutcome, Task, TaskAttempt
from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME
from apps.tasks.states import TaskStatus
from tests.support import processes
from tests.support.wait import wait_for
from tests.tasks.factories import create_task

S = TaskStatus
pytestmark = [pytest.mark.django_db(transaction=True)]


def status_of(task: Task) -> str:
    return Task.objects.values_list("status", flat=True).get(id=task.id)


def wait_status(task: Task, *statuses: str, timeout: float = 30) -> Task:
    wait_for(
        lambda: status_of(task) in statuses, timeout=timeout, what=f"{task.type} -> {statuses}"
    )
    task.refresh_from_db()
    return task


@pytest.fixture
def worker(broker: Any) -> Any:
    with processes.running("worker", WORKER_CONCURRENCY="2") as started:
        yield started["worker"]


def test_a_failed_task_is_dead_lettered_recorded_and_replayed(user, broker, worker):
    task = create_task(user, "test_flaky", {"fail_times": 1}, max_retries=0)
    wait_status(task, S.FAILED)

    # The worker rejected the message into the dead-letter exchange: it is in RabbitMQ's DLQ.
    wait_for(lambda: broker.depth(DEAD_LETTER_QUEUE_NAME) == 1, what="the dead letter")
    message = broker.peek(DEAD_LETTER_QUEUE_NAME)
    death = message.headers["x-death"][0]
    assert death["reason"] == "rejected"
    assert death["queue"] == "default"
    assert message.headers["id"] == str(task.dispatch_id)
    task.refresh_from_db()
    assert task.dead_lettered_at is None

    # The dead-letter consumer takes it off the queue and records it on the task.
    with processes.running("deadletters"):
        wait_for(
            lambda: Task.objects.filter(id=task.id, dead_lettered_at__isnull=False).exists(),
            what="the dead letter recorded",
        )
        wait_for(lambda: broker.depth(DEAD_LETTER_QUEUE_NAME) == 0, what="the DLQ drained")
    task.refresh_from_db()
    assert task.dead_letter_reason == "rejected from queue default"
    assert broker.depth(DEAD_LETTER_QUEUE_NAME) == 0

    # Replay: runs again with a fresh retry budget, and attempt 2 succeeds.
    services.task_retry(task=task, actor=user)
    task = wait_status(task, S.SUCCEEDED)
    assert task.result == {"succeeded_on_attempt": 2}
    assert task.dead_lettered_at is None
    assert task.status_changes.filter(note="replayed from the dead-letter queue").exists()


def _dead_letter(broker: Any, queue: str = "default") -> None:
    """Reject the queue's next message into the dead-letter exchange, as a worker does."""
    message = broker.channel.basic_get(queue=queue, no_ack=False)
    assert message is not None
    broker.channel.basic_reject(message.delivery_tag, requeue=False)


def test_a_foreign_dead_letter_does_not_stop_the_dead_letter_consumer(user, broker):
    """Regression: a Celery message of a task the workers do not know (another app's, or one
    renamed in a deploy) is rejected by the worker, so RabbitMQ dead-letters it. Its arguments
    were taken for a task id; the look-up raised, the consumer exited, and the message, never
    acked, stopped it again at every start. It is logged and acked, and the real dead letters
    behind it are recorded."""
    from taskflow.celery import app

    app.send_task("reports.send_weekly", args=["acme-corp", 7], queue="default")
    _dead_letter(broker)
    failed = create_task(user, "test_permanent", {})
    outcome = handle_delivery(
        task_id=str(failed.id),
        dispatch_id=str(failed.dispatch_id),
        task_type=failed.type,
        redelivered=False,
        worker="w1",
    )
    assert outcome.dead_letter
    _dead_letter(broker)
    wait_for(lambda: broker.depth(DEAD_LETTER_QUEUE_NAME) == 2, what="both dead letters")

    with processes.running("deadletters") as started:
        consumer = started["deadletters"]
        wait_for(
            lambda: (
                consumer.returncode is not None
                or Task.objects.filter(id=failed.id, dead_lettered_at__isnull=False).exists()
            ),
            what="the consumer to record the dead letter behind the foreign one",
        )
        wait_for(
            lambda: consumer.returncode is not None or broker.depth(DEAD_LETTER_QUEUE_NAME) == 0,
            what="the DLQ drained",
        )
        assert consumer.returncode is None, consumer.log()[-3000:]
        assert "not a TaskFlow task" in consumer.log() or "not TaskFlow's" in consumer.log()
    failed.refresh_from_db()
    assert failed.dead_letter_reason == "rejected from queue default"
    assert broker.depth(DEAD_LETTER_QUEUE_NAME) == 0


def test_the_same_message_delivered_twice_runs_once(user, broker, worker, tmp_path: Path):
    marker = tmp_path / "runs.txt"
    task, _ = services.task_create(
        owner=user, type="test_sleep", payload={"seconds": 0.5, "marker": str(marker)}
    )
    dispatch = publisher.dispatch_for(task)
    assert publisher.publish_now([dispatch, dispatch]) == 2  # plus the one from create
    task = wait_status(task, S.SUCCEEDED)
    wait_for(lambda: broker.depth("default") == 0, what="all copies consumed")
    assert marker.read_text().count(str(task.id)) == 1
    assert task.attempts == 1


def test_a_poison_message_ends_in_the_dead_letter_queue_and_the_queue_keeps_flowing(
    user, broker, worker
):
    with processes.running("beat"):
        poison = create_task(user, "test_crash", {}, max_retries=2)
        healthy = [create_task(user, "echo", {"n": n}) for n in range(20)]
        poison = wait_status(poison, S.FAILED, timeout=60)
        for task in healthy:
            wait_status(task, S.SUCCEEDED)
    assert poison.attempts == 3
    outcomes = list(TaskAttempt.objects.filter(task=poison).values_list("outcome", flat=True))
    assert outcomes == [AttemptOutcome.LOST] * 3
    wait_for(lambda: broker.depth(DEAD_LETTER_QUEUE_NAME) == 1, what="the poison dead letter")


def test_a_killed_worker_loses_nothing(user, broker):
    with processes.running("beat"):
        first = processes.start("worker", env=processes.test_environment(WORKER_CONCURRENCY="2"))
        task = create_task(user, "test_sleep", {"seconds": 2}, max_retries=2)
        wait_status(task, S.RUNNING)
        first.kill_group(signal.SIGKILL)  # the whole worker, children included
        first.stop()
        second = processes.start("worker", env=processes.test_environment(WORKER_CONCURRENCY="2"))
        try:
            task = wait_status(task, S.SUCCEEDED, timeout=60)
        finally:
            second.stop()
    outcomes = list(TaskAttempt.objects.filter(task=task).values_list("outcome", flat=True))
    assert outcomes == [AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]


def test_sigterm_lets_the_running_task_finish(user, broker):
    worker = processes.start("worker", env=processes.test_environment(WORKER_CONCURRENCY="2"))
    task = create_task(user, "test_sleep", {"seconds": 1.5})
    wait_status(task, S.RUNNING)
    worker.signal(signal.SIGTERM)
    worker.popen.wait(timeout=30)
    worker.stop()
    task.refresh_from_db()
    assert task.status == S.SUCCEEDED
    assert task.attempts == 1


def test_a_batched_type_runs_four_to_a_message_and_a_killed_pool_process_loses_nothing(
    user, broker, tmp_path: Path
):
    """test_batched has batch_size 4: eight tasks created together are two messages, each
    claimed in one statement. The second task kills its pool process the first time: the
    message comes back, and its four tasks (claimed, none finished: a batch records its
    successes at its end) count one lost attempt each and run again; the other batch is not
    touched."""
    payloads: list[dict[str, Any]] = [{"n": n} for n in range(8)]
    payloads[1] = {"crash_marker": str(tmp_path / "crashed")}
    created, _ = services.task_create_bulk(
        owner=user, items=[{"type": "test_batched", "payload": p} for p in payloads]
    )
    tasks = [Task.objects.get(id=new.id) for new in created]
    with processes.running("beat"), processes.running("worker", WORKER_CONCURRENCY="2"):
        for task in tasks:
            wait_status(task, S.SUCCEEDED, timeout=60)
    assert (tmp_path / "crashed").exists()
    outcomes = [
        list(
            TaskAttempt.objects.filter(task=t).order_by("number").values_list("outcome", flat=True)
        )
        for t in tasks
    ]
    assert outcomes[:4] == [[AttemptOutcome.LOST, AttemptOutcome.SUCCEEDED]] * 4
    assert outcomes[4:] == [[AttemptOutcome.SUCCEEDED]] * 4
    first_starts = [
        TaskAttempt.objects.get(task=t, number=1).started_at for t in tasks
    ]  # one claim statement per message
    assert len(set(first_starts[:4])) == 1 and len(set(first_starts[4:])) == 1
    assert [t.result for t in tasks[4:]] == payloads[4:]
    assert broker.depth(DEAD_LETTER_QUEUE_NAME) == 0


def test_a_real_worker_leases_by_the_time_limit_its_message_carries(user, broker):
    """The lease comes from the limit the worker enforces on the message (Celery's
    request.timelimit, else its default), not from a type limit lowered since publishing."""
    from django.conf import settings

    from apps.handlers.models import TaskType
    from apps.handlers.services import task_type_save

    task = create_task(user, "test_sleep", {"seconds": 1.5})
    row = TaskType.objects.get(name="test_sleep")
    row.time_limit_seconds = 1
    task_type_save(task_type=row)  # after the message was published with the default limit
    with processes.running("worker", WORKER_CONCURRENCY="1"):
        task = wait_status(task, S.RUNNING)
        assert task.lease_expires_at is not None and task.started_at is not None
        lease = (task.lease_expires_at - task.started_at).total_seconds()
        assert lease >= settings.CELERY_TASK_TIME_LIMIT, lease
        task = wait_status(task, S.SUCCEEDED)  # the message's limit, not the type's 1 s, applies


def _runs(marker: Path, task: Task) -> int:
    """How many times the handler of `task` started (test_batched_short's marker lines)."""
    lines = marker.read_text().splitlines() if marker.exists() else []
    return sum(1 for line in lines if line.split()[0] == str(task.id))


def _attempts(task: Task) -> list[tuple[str, str]]:
    return list(
        TaskAttempt.objects.filter(task=task).order_by("number").values_list("outcome", "error")
    )


def _create_batch(user: Any, payloads: list[dict[str, Any]]) -> list[Task]:
    """One message: test_batched_short has batch_size 4 (a bulk create shares messages)."""
    created, _ = services.task_create_bulk(
        owner=user, items=[{"type": "test_batched_short", "payload": p} for p in payloads]
    )
    return [Task.objects.get(id=new.id) for new in created]


def test_a_task_that_hangs_in_a_batch_ends_at_its_own_time_limit(user, broker, tmp_path: Path):
    """test_batched_short: 2 s a task, 4 to a message (whose limits are 4 x 2 s + margins). The
    second task hangs: it ends at its own 2 s ("time limit exceeded", retrying), not at the
    message's soft limit (13 s), and the other three run once each and succeed."""
    marker = tmp_path / "runs.txt"
    payloads: list[dict[str, Any]] = [{"n": n, "marker": str(marker)} for n in range(4)]
    payloads[1]["sleep"] = 100
    tasks = _create_batch(user, payloads)
    with processes.running("worker", WORKER_CONCURRENCY="1") as started:
        try:
            for task in tasks[:1] + tasks[2:]:
                wait_status(task, S.SUCCEEDED, timeout=40)
            hung = wait_status(tasks[1], S.RETRYING, timeout=40)
        except AssertionError:
            raise AssertionError(processes.dump_logs(started)) from None
    assert hung.attempts == 1 and hung.error == "time limit exceeded"
    assert _attempts(hung) == [(AttemptOutcome.FAILED, "time limit exceeded")]
    attempt = TaskAttempt.objects.get(task=hung, number=1)
    assert attempt.finished_at is not None
    ran_for = (attempt.finished_at - attempt.started_at).total_seconds()
    assert 2 <= ran_for < 6, ran_for  # its own limit, from the batch's claim (task 1 is quick)
    for task in tasks[:1] + tasks[2:]:
        task.refresh_from_db()
        assert task.attempts == 1 and _runs(marker, task) == 1
        assert _attempts(task) == [(AttemptOutcome.SUCCEEDED, "")]
        assert task.finished_at is not None
        assert (task.finished_at - attempt.started_at).total_seconds() < 8
    assert _runs(marker, hung) == 1


def test_a_batch_records_its_successes_before_a_task_that_follows_a_hung_one(
    user, broker, tmp_path: Path
):
    """The second task hangs to its limit, then the third kills its pool process (as the
    message's hard limit would). The first task's success was recorded before the third began:
    the message comes back and does not run it again. The third and fourth (claimed, not
    finished) count one lost attempt each."""
    marker = tmp_path / "runs.txt"
    payloads: list[dict[str, Any]] = [{"n": n, "marker": str(marker)} for n in range(4)]
    payloads[1]["sleep"] = 100
    payloads[2]["crash_marker"] = str(tmp_path / "crashed")
    tasks = _create_batch(user, payloads)
    with processes.running("worker", WORKER_CONCURRENCY="1") as started:
        try:
            # The redelivered message goes task by task, in order: once the last is settled
            # (a lost attempt), so is the first.
            for task in tasks[1:]:
                wait_status(task, S.RETRYING, timeout=40)
        except AssertionError:
            raise AssertionError(processes.dump_logs(started)) from None
    assert (tmp_path / "crashed").exists()
    first = tasks[0]
    first.refresh_from_db()
    assert (first.status, first.attempts, _runs(marker, first)) == (S.SUCCEEDED, 1, 1)
    assert _attempts(first) == [(AttemptOutcome.SUCCEEDED, "")]
    assert _attempts(tasks[1]) == [(AttemptOutcome.FAILED, "time limit exceeded")]
    for task in tasks[2:]:
        assert [outcome for outcome, _ in _attempts(task)] == [AttemptOutcome.LOST]
    assert [_runs(marker, t) for t in tasks] == [1, 1, 1, 0]
