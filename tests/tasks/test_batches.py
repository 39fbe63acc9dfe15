"""Batched messages: several tasks of a type with a batch_size in one message, claimed and
finished in one statement each (apps.tasks.execution.handle_batch), against the real database
and broker."""

import dataclasses
import json
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from apps.handlers.registry import RateLimit, get_task_type
from apps.tasks import execution, publisher, services
from apps.tasks.deadletters import handle_dead_letter, parse_dead_letters
from apps.tasks.execution import handle_batch
from apps.tasks.models import AttemptOutcome, Task, TaskAttempt, TaskStatusChange
from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME
from apps.tasks.states import TaskStatus
from tests.tasks.factories import create_task

S = TaskStatus


def run_batch(tasks: list[Task], *, redelivered: bool = False) -> list[Any]:
    for task in tasks:
        task.refresh_from_db()
    return handle_batch(
        task_type=tasks[0].type,
        pairs=[(str(t.id), str(t.dispatch_id)) for t in tasks],
        redelivered=redelivered,
        worker="test-worker",
        queue="default",
    )


def statuses(tasks: list[Task]) -> list[str]:
    by_id = dict(Task.objects.filter(id__in=[t.id for t in tasks]).values_list("id", "status"))
    return [by_id[t.id] for t in tasks]


def test_a_batch_is_claimed_and_finished_in_one_statement_each(user, settings):
    settings.DATABASE_PREPARED_STATEMENTS = False  # Django's cursor, which the capture sees
    tasks = [create_task(user, "echo", {"n": n}) for n in range(5)]
    pairs = [(str(t.id), str(t.dispatch_id)) for t in tasks]
    get_task_type("echo")  # the type cache, warm as in a running worker
    with CaptureQueriesContext(connection) as queries:
        outcomes = handle_batch(task_type="echo", pairs=pairs, redelivered=False, worker="w")
    assert [o.status for _, _, o in outcomes] == [S.SUCCEEDED] * 5
    sql = [str(q["sql"]) for q in queries.captured_queries]
    touching_tasks = [q for q in sql if "tasks_task" in q]
    assert len(touching_tasks) == 2  # the claim and the finish
    for n, task in enumerate(tasks):
        task.refresh_from_db()
        assert (task.status, task.result, task.attempts, task.progress) == (
            S.SUCCEEDED,
            {"n": n},
            1,
            100,
        )
        assert task.finished_at is not None and task.lease_expires_at is None
        history = list(
            TaskStatusChange.objects.filter(task=task)
            .order_by("id")
            .values_list("from_status", "to_status", "note")
        )
        assert history[1:] == [
            (S.QUEUED, S.RUNNING, "claimed by w"),
            (S.RUNNING, S.SUCCEEDED, "attempt 1: succeeded"),
        ]
        attempt = TaskAttempt.objects.get(task=task)
        assert (attempt.outcome, attempt.worker) == (AttemptOutcome.SUCCEEDED, "w")
    # One claim statement: every task started at the same statement time.
    assert len({t.started_at for t in tasks}) == 1


def test_each_task_of_a_batch_ends_its_own_way(user, broker):
    ok = create_task(user, "test_batched", {"say": "hi"})
    retried = create_task(user, "test_batched", {"fail": "retryable"})
    failed = create_task(user, "test_batched", {"fail": "permanent"})
    not_json = create_task(user, "test_batched", {"nan": True})
    outcomes = run_batch([ok, retried, failed, not_json])
    by_id = {task_id: outcome for task_id, _, outcome in outcomes}
    assert statuses([ok, retried, failed, not_json]) == [
        S.SUCCEEDED,
        S.RETRYING,
        S.FAILED,
        S.FAILED,
    ]
    assert by_id[str(failed.id)].dead_letter and by_id[str(not_json.id)].dead_letter
    ok.refresh_from_db()
    assert ok.result == {"say": "hi"}
    not_json.refresh_from_db()
    assert "not JSON: Out of range float values" in not_json.error

    # The failed ones could not reject the message (it carried the others): a record each.
    records = [broker.get(DEAD_LETTER_QUEUE_NAME) for _ in range(2)]
    assert broker.get(DEAD_LETTER_QUEUE_NAME) is None
    bodies = [json.loads(record.body) for record in records]
    assert {b["task_id"] for b in bodies} == {str(failed.id), str(not_json.id)}
    assert records[0].headers["x-taskflow-reason"] == (
        "failed in a batched message from queue default"
    )


def test_a_batch_record_in_the_dead_letter_queue_is_recorded_on_its_task(user, broker):
    failed = create_task(user, "test_batched", {"fail": "permanent"})
    run_batch([failed, create_task(user, "test_batched", {})])
    record = broker.channel.basic_get(queue=DEAD_LETTER_QUEUE_NAME, no_ack=False)

    class Acked:
        headers = record.headers
        acked = False

        def ack(self) -> None:
            self.acked = True

    message = Acked()
    handle_dead_letter(record.body, message)  # type: ignore[arg-type]
    assert message.acked
    failed.refresh_from_db()
    assert failed.dead_lettered_at is not None
    assert failed.dead_letter_reason == "failed in a batched message from queue default"


def test_stale_duplicate_and_cancelled_entries_of_a_batch_do_not_run(user):
    fresh = create_task(user, "echo", {"n": 1})
    cancelled = create_task(user, "echo", {"n": 2})
    services.task_cancel(task=cancelled, actor=user)
    stale = create_task(user, "echo", {"n": 3})
    done = create_task(user, "echo", {"n": 4})
    run_batch([done])
    for task in (fresh, cancelled, stale, done):
        task.refresh_from_db()
    pairs = [
        (str(fresh.id), str(fresh.dispatch_id)),
        (str(fresh.id), str(fresh.dispatch_id)),  # twice in one message: run once
        (str(cancelled.id), str(cancelled.dispatch_id)),
        (str(stale.id), "00000000-0000-4000-8000-000000000000"),
        (str(done.id), str(done.dispatch_id)),
    ]
    outcomes = handle_batch(task_type="echo", pairs=pairs, redelivered=False, worker="w")
    actions = {task_id: (o.action, o.note) for task_id, _, o in outcomes}
    assert len(outcomes) == 4
    assert actions[str(fresh.id)] == ("ran", "")
    assert actions[str(cancelled.id)][0] == "dropped"
    assert actions[str(stale.id)] == ("dropped", "stale message")
    assert actions[str(done.id)] == ("dropped", "duplicate message")
    assert statuses([fresh, cancelled, stale, done]) == [
        S.SUCCEEDED,
        S.CANCELLED,
        S.QUEUED,
        S.SUCCEEDED,
    ]
    assert TaskAttempt.objects.filter(task=fresh).count() == 1


def test_a_redelivered_batch_settles_what_its_lost_worker_left_running(user):
    """The worker died mid-batch: the claimed tasks are running, one had finished. Redelivered,
    the message goes task by task: the running ones are lost attempts, retried."""
    tasks = [create_task(user, "test_batched", {"n": n}) for n in range(3)]
    pairs = [(str(t.id), str(t.dispatch_id)) for t in tasks]
    finished, *running = tasks
    Task.objects.filter(id__in=[t.id for t in tasks]).update(status=S.RUNNING, attempts=1)
    Task.objects.filter(id=finished.id).update(status=S.SUCCEEDED)
    for task in tasks:
        TaskAttempt.objects.create(task=task, number=1, started_at=task.created_at)
    outcomes = handle_batch(task_type="test_batched", pairs=pairs, redelivered=True, worker="w")
    assert sorted(o.action for _, _, o in outcomes) == ["dropped", "lost", "lost"]
    assert statuses(tasks) == [S.SUCCEEDED, S.RETRYING, S.RETRYING]
    lost = TaskAttempt.objects.filter(task__in=running).values_list("outcome", flat=True)
    assert list(lost) == [AttemptOutcome.LOST] * 2


def test_a_batch_whose_type_got_a_rate_limit_goes_task_by_task(user, monkeypatch):
    """Published as a batch, then staff set a rate limit: each task is admitted on its own (the
    second is held by the limit, not run)."""
    tasks = [create_task(user, "test_batched", {"n": n}) for n in range(2)]
    spec = get_task_type("test_batched")
    assert spec is not None
    limited = dataclasses.replace(spec, rate_limit=RateLimit.parse("1/min"))
    monkeypatch.setattr("apps.tasks.execution.get_task_type", lambda name: limited)
    outcomes = run_batch(tasks)
    assert sorted(o.action for _, _, o in outcomes) == ["held", "ran"]
    assert sorted(statuses(tasks)) == sorted([S.SUCCEEDED, S.POSTPONED])


def test_a_dead_lettered_batched_message_names_each_of_its_tasks():
    t1, d1, t2, d2, t3, d3 = (str(uuid.uuid4()) for _ in range(6))
    body = [["echo", [[t1, d1], [t2, d2]]], {}, {}]
    headers = {"x-death": [{"reason": "expired", "queue": "default", "count": 1}]}
    parsed = parse_dead_letters(json.dumps(body), headers)
    assert [(p["task_id"], p["dispatch_id"], p["reason"]) for p in parsed] == [
        (t1, d1, "expired from queue default"),
        (t2, d2, "expired from queue default"),
    ]
    single = parse_dead_letters([[t3, d3, "echo"], {}, {}], {})
    assert [(p["task_id"], p["dispatch_id"]) for p in single] == [(t3, d3)]
    assert parse_dead_letters({"other": 1}, {}) == []


def test_a_dead_letter_whose_ids_are_not_uuids_is_not_ours():
    """Regression: another app's Celery task rejected by a worker reaches the dead-letter queue
    with arguments of its own; they were taken for ids, and the look-up's ValidationError stopped
    the consumer at every start."""
    task_id, dispatch_id = str(uuid.uuid4()), str(uuid.uuid4())
    assert parse_dead_letters([["acme-corp", 7], {}, {}], {}) == []
    assert parse_dead_letters([["acme-corp", [["a", "b"], [1, 2]]], {}, {}], {}) == []
    assert parse_dead_letters({"task_id": "nope", "dispatch_id": None}, {}) == []
    assert parse_dead_letters([[task_id, "not-a-dispatch", "echo"], {}, {}], {}) == []
    # Only the pairs that are ours, of a message that mixes them; a reaper's record has no
    # dispatch id when it had none.
    mixed = parse_dead_letters([["echo", [["x", "y"], [task_id, dispatch_id]]], {}, {}], {})
    assert [(p["task_id"], p["dispatch_id"]) for p in mixed] == [(task_id, dispatch_id)]
    reaped = parse_dead_letters({"task_id": task_id, "dispatch_id": None}, {})
    assert [(p["task_id"], p["dispatch_id"]) for p in reaped] == [(task_id, "")]


class FakeMessage:
    def __init__(self, headers: dict[str, Any] | None = None) -> None:
        self.headers = headers or {}
        self.settled: list[tuple[str, bool]] = []

    def ack(self) -> None:
        self.settled.append(("ack", False))

    def reject(self, requeue: bool = False) -> None:
        self.settled.append(("reject", requeue))


def test_a_dead_letter_that_cannot_be_recorded_is_logged_and_rejected(user, monkeypatch, caplog):
    """Any unexpected error with one message (not the database being away) must not stop the
    consumer: the message is logged with its traceback and rejected without requeue."""
    failed = create_task(user, "test_permanent", {})

    def broken(**kwargs: Any) -> bool:
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(services, "task_record_dead_letter", broken)
    message = FakeMessage()
    handle_dead_letter([[str(failed.id), str(failed.dispatch_id), "echo"], {}, {}], message)  # type: ignore[arg-type]
    assert message.settled == [("reject", False)]
    logged = [r for r in caplog.records if "could not be recorded" in r.getMessage()]
    assert logged and logged[0].exc_info is not None


def test_a_dead_letter_seen_while_the_database_is_away_is_left_for_redelivery(user, monkeypatch):
    def away(**kwargs: Any) -> bool:
        raise OperationalError("the database is away")

    monkeypatch.setattr(services, "task_record_dead_letter", away)
    message = FakeMessage()
    with pytest.raises(OperationalError):
        handle_dead_letter([[str(uuid.uuid4()), str(uuid.uuid4()), "echo"], {}, {}], message)  # type: ignore[arg-type]
    assert message.settled == []  # unacked: the broker delivers it again


@contextmanager
def sigalrm_recorded(timer_seconds: float = 0) -> Iterator[list[int]]:
    """A SIGALRM handler of the test's own that records what reaches it (and, if
    `timer_seconds`, a timer of its own armed), in place of pytest-timeout's for the block."""
    fired: list[int] = []

    def record(signum: int, frame: Any) -> None:
        fired.append(signum)

    saved_timer = signal.setitimer(signal.ITIMER_REAL, 0)
    saved_handler = signal.signal(signal.SIGALRM, record)
    try:
        if timer_seconds:
            signal.setitimer(signal.ITIMER_REAL, timer_seconds)
        yield fired
        assert signal.getsignal(signal.SIGALRM) is record
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved_handler)
        if saved_timer[0]:
            signal.setitimer(signal.ITIMER_REAL, *saved_timer)


def test_a_task_that_hangs_in_a_batch_ends_at_its_own_limit_and_the_batch_goes_on(user):
    """test_batched_short: 2 s a task. The second sleeps past it: SoftTimeLimitExceeded at 2 s
    ends its attempt as the message's soft limit would (retryable); the third runs. The timer
    is disarmed after each task and SIGALRM's handler put back: nothing fires afterwards."""
    tasks = [
        create_task(user, "test_batched_short", payload)
        for payload in ({"n": 0}, {"sleep": 5}, {"n": 2})
    ]
    with sigalrm_recorded() as fired:
        started = time.monotonic()
        run_batch(tasks)
        took = time.monotonic() - started
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
    assert fired == []
    assert 2 <= took < 4, took
    assert statuses(tasks) == [S.SUCCEEDED, S.RETRYING, S.SUCCEEDED]
    hung = Task.objects.get(id=tasks[1].id)
    assert (hung.attempts, hung.error) == (1, "time limit exceeded")
    attempt = TaskAttempt.objects.get(task=hung)
    assert (attempt.outcome, attempt.error) == (AttemptOutcome.FAILED, "time limit exceeded")


def test_a_timer_armed_before_a_batch_is_armed_again_with_what_it_had_left(user):
    tasks = [create_task(user, "test_batched_short", {"n": n}) for n in range(3)]
    with sigalrm_recorded(timer_seconds=250) as fired:
        started = time.monotonic()
        run_batch(tasks)
        took = time.monotonic() - started
        left, interval = signal.getitimer(signal.ITIMER_REAL)
    assert 250 - took - 1 < left <= 250 - took + 0.01 and interval == 0  # (clocks' rounding)
    assert fired == []
    assert statuses(tasks) == [S.SUCCEEDED] * 3


def test_a_batch_records_its_successes_before_its_next_task_once_it_has_taken_a_while(
    user, settings, monkeypatch
):
    """Successes wait for the batch's end, unless the batch has run RECORD_SUCCEEDED_AFTER_SECONDS
    since it last recorded them: then they are recorded before its next task (one statement)."""
    settings.DATABASE_PREPARED_STATEMENTS = False  # Django's cursor, which the capture sees
    monkeypatch.setattr(execution, "RECORD_SUCCEEDED_AFTER_SECONDS", 0.2)
    payloads: list[dict[str, Any]] = [{"sleep": 0.3}, {"n": 1}, {"sleep": 0.3}, {"n": 3}]
    tasks = [create_task(user, "test_batched_short", p) for p in payloads]
    pairs = [(str(t.id), str(t.dispatch_id)) for t in tasks]
    get_task_type("test_batched_short")  # the type cache, warm as in a running worker
    with CaptureQueriesContext(connection) as queries:
        handle_batch(task_type="test_batched_short", pairs=pairs, redelivered=False, worker="w")
    touching_tasks = [q for q in queries.captured_queries if "tasks_task" in str(q["sql"])]
    assert len(touching_tasks) == 4  # the claim; [1], before 2; [2, 3], before 4; [4], at the end
    assert statuses(tasks) == [S.SUCCEEDED] * 4
    finished = [Task.objects.get(id=t.id).finished_at for t in tasks]
    assert finished[1] == finished[2]
    assert len({finished[0], finished[1], finished[3]}) == 3


def test_a_batch_left_by_an_exception_records_the_successes_it_holds(user):
    """SystemExit (say) leaves the batch mid-way: the message will come back and settle what is
    running as lost; the first task, already succeeded, is recorded now and will not run again."""
    tasks = [
        create_task(user, "test_batched_short", payload)
        for payload in ({"n": 0}, {"exit": "stop"}, {"n": 2})
    ]
    with pytest.raises(SystemExit):
        run_batch(tasks)
    assert statuses(tasks) == [S.SUCCEEDED, S.RUNNING, S.RUNNING]
    assert Task.objects.get(id=tasks[0].id).result == {"n": 0}


def test_a_batch_s_tasks_get_the_limit_their_message_was_published_with(user):
    """As a single message keeps its limits: a batch published while test_batched's limit was
    1 s (its soft limit 4 x 1 + 5 s) gives each task 1 s, whatever the type says now (20 s)."""
    soft = publisher._time_limits(1, tasks=4, task=None)["soft_time_limit"]
    assert publisher.batch_task_time_limit(soft, tasks=4) == 1
    assert publisher.batch_task_time_limit(None, tasks=4) is None
    tasks = [
        create_task(user, "test_batched", payload)
        for payload in ({"n": 0}, {"sleep": 25}, {"n": 2}, {"n": 3})
    ]
    for task in tasks:
        task.refresh_from_db()
    started = time.monotonic()
    handle_batch(
        task_type="test_batched",
        pairs=[(str(t.id), str(t.dispatch_id)) for t in tasks],
        redelivered=False,
        worker="w",
        soft_time_limit=soft,
    )
    assert 1 <= time.monotonic() - started < 10
    assert statuses(tasks) == [S.SUCCEEDED, S.RETRYING, S.SUCCEEDED, S.SUCCEEDED]


@pytest.mark.django_db(transaction=True)  # the connection is dropped: no test transaction on it
def test_a_task_whose_limit_falls_in_a_database_query_does_not_sink_its_batch(user):
    """The limit's SIGALRM can fall while the handler waits on PostgreSQL (its own query, its
    progress, its cancel check). psycopg leaves that query running on the connection, so every
    later statement on it would fail: the hung task's retry, and the batch's successes."""
    tasks = [
        create_task(user, "test_batched_short", payload)
        for payload in ({"n": 0}, {"pg_sleep": 5}, {"n": 2})
    ]
    with sigalrm_recorded() as fired:
        run_batch(tasks)
    assert fired == []
    assert statuses(tasks) == [S.SUCCEEDED, S.RETRYING, S.SUCCEEDED]
    assert Task.objects.get(id=tasks[1].id).error == "time limit exceeded"
