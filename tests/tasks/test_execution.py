"""What a worker does with a message, called directly against the real database."""

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.utils import timezone

from apps.handlers.models import TaskType
from apps.handlers.registry import get_task_type
from apps.handlers.services import task_type_save
from apps.tasks import execution, services
from apps.tasks.backoff import MAX_RETRY_DELAY_SECONDS, retry_delay, retry_wait
from apps.tasks.execution import attempt_lost, handle_delivery
from apps.tasks.models import AttemptOutcome, Task, TaskAttempt, TaskStatusChange
from apps.tasks.states import TaskStatus
from tests.support.wait import wait_for
from tests.tasks.factories import create_task

S = TaskStatus


MESSAGE_FORMS = {"typed": True}


@pytest.fixture(autouse=True, params=["typed", "untyped"])
def message_form(request):
    """Every test here runs with a message that names the task's type (what the publisher sends:
    the claim needs no read first) and with an older message that does not."""
    MESSAGE_FORMS["typed"] = request.param == "typed"
    return request.param


def deliver(task: Task, *, redelivered: bool = False, dispatch_id: str | None = None):
    task.refresh_from_db()
    return handle_delivery(
        task_id=str(task.id),
        dispatch_id=dispatch_id or str(task.dispatch_id),
        task_type=task.type if MESSAGE_FORMS["typed"] else "",
        redelivered=redelivered,
        worker="test-worker",
    )


def test_a_message_naming_another_type_does_not_run_the_task(user):
    task = create_task(user, "echo", {"x": 1})
    outcome = handle_delivery(
        task_id=str(task.id),
        dispatch_id=str(task.dispatch_id),
        task_type="long_computation",
        redelivered=False,
        worker="test-worker",
    )
    assert outcome.action == "dropped"
    task.refresh_from_db()
    assert (task.status, task.attempts) == (S.QUEUED, 0)
    assert not TaskAttempt.objects.filter(task=task).exists()


def release_when_due(task: Task) -> None:
    task.refresh_from_db()
    run_at = task.run_at
    assert run_at is not None
    wait_for(lambda: timezone.now() >= run_at, timeout=5, what="the retry wait")
    assert services.release_due_tasks() >= 1


def test_echo_runs_and_records_one_attempt(user):
    task = create_task(user, "echo", {"hello": "world"})
    outcome = deliver(task)
    assert (outcome.action, outcome.status) == ("ran", S.SUCCEEDED)
    task.refresh_from_db()
    assert task.status == S.SUCCEEDED
    assert task.result == {"hello": "world"}
    assert task.attempts == 1
    assert task.started_at and task.finished_at and task.lease_expires_at is None
    attempt = TaskAttempt.objects.get(task=task)
    assert (attempt.number, attempt.outcome, attempt.worker) == (1, "succeeded", "test-worker")
    assert list(
        TaskStatusChange.objects.filter(task=task).values_list("from_status", "to_status")
    ) == [("", "queued"), ("queued", "running"), ("running", "succeeded")]


def test_a_duplicate_message_after_success_does_nothing(user):
    task = create_task(user)
    deliver(task)
    outcome = deliver(task)
    assert outcome.action == "dropped"
    task.refresh_from_db()
    assert task.attempts == 1
    assert TaskAttempt.objects.filter(task=task).count() == 1


def test_a_stale_message_with_another_dispatch_id_does_nothing(user):
    task = create_task(user)
    outcome = deliver(task, dispatch_id=str(uuid.uuid4()))
    assert outcome.action == "dropped"
    task.refresh_from_db()
    assert (task.status, task.attempts) == (S.QUEUED, 0)


def test_a_message_for_a_deleted_task_is_dropped(user):
    outcome = handle_delivery(
        task_id=str(uuid.uuid4()), dispatch_id=str(uuid.uuid4()), redelivered=False, worker="w"
    )
    assert outcome.action == "dropped"


def test_a_message_for_a_cancelled_task_does_nothing(user):
    task = create_task(user)
    services.task_cancel(task=task, actor=user)
    outcome = deliver(task, dispatch_id=str(uuid.uuid4()))
    assert outcome.action == "dropped"
    task.refresh_from_db()
    assert (task.status, task.attempts) == (S.CANCELLED, 0)


def test_retryable_failures_back_off_then_succeed(user):
    task = create_task(user, "test_flaky", {"fail_times": 2}, max_retries=3)
    assert deliver(task).status == S.RETRYING
    task.refresh_from_db()
    assert task.retries == 1
    assert task.dispatch_id is None  # the old message can no longer run it
    assert task.error == "RetryableError: planned failure 1 of 2"
    release_when_due(task)
    assert deliver(task).status == S.RETRYING
    release_when_due(task)
    assert deliver(task).status == S.SUCCEEDED
    task.refresh_from_db()
    assert task.result == {"succeeded_on_attempt": 3}
    assert task.attempts == 3
    assert list(TaskAttempt.objects.filter(task=task).values_list("outcome", flat=True)) == [
        "failed",
        "failed",
        "succeeded",
    ]


def test_a_handler_can_choose_its_retry_wait(user):
    task = create_task(user, "test_flaky", {"fail_times": 1, "retry_after": 120})
    before = timezone.now()
    assert deliver(task).status == S.RETRYING
    task.refresh_from_db()
    assert task.run_at is not None
    assert before + timedelta(seconds=119) < task.run_at < before + timedelta(seconds=122)


def test_a_retry_wait_too_long_for_a_datetime_is_cut_to_the_maximum(user):
    """Regression: RetryableError(retry_after=1e12) (an SDK handler passing a server's value
    through) overflowed now + wait; the OverflowError escaped the attempt's recording, the
    worker acked the message, and the task stayed running until its lease expired."""
    task = create_task(user, "test_flaky", {"fail_times": 1, "retry_after": 1e12})
    before = timezone.now()
    assert deliver(task).status == S.RETRYING
    task.refresh_from_db()
    assert task.run_at is not None
    longest = timedelta(seconds=MAX_RETRY_DELAY_SECONDS)
    assert before + longest <= task.run_at <= timezone.now() + longest


def test_a_types_backoff_too_long_for_a_datetime_is_cut_to_the_maximum(user):
    row = TaskType.objects.get(name="test_flaky")
    row.backoff_base_seconds = row.backoff_cap_seconds = 1e15  # saved past the admin's check
    task_type_save(task_type=row)
    task = create_task(user, "test_flaky", {"fail_times": 1})
    assert deliver(task).status == S.RETRYING
    task.refresh_from_db()
    assert task.run_at is not None
    assert task.run_at <= timezone.now() + timedelta(seconds=MAX_RETRY_DELAY_SECONDS)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(1e12, MAX_RETRY_DELAY_SECONDS), (float("inf"), MAX_RETRY_DELAY_SECONDS), (-5, 0), (7, 7)],
)
def test_a_handlers_retry_wait_is_bounded(retry_after, expected):
    assert retry_wait(1, retry_after=retry_after).total_seconds() == expected
    assert retry_wait(1, retry_after=float("nan"), base=1, cap=1).total_seconds() <= 1
    huge = retry_wait(100, retry_after=None, base=1e300, cap=float("inf"))
    assert 0 <= huge.total_seconds() <= MAX_RETRY_DELAY_SECONDS


def test_running_out_of_retries_fails_and_asks_for_dead_lettering(user):
    task = create_task(user, "test_flaky", {"fail_times": 5}, max_retries=1)
    assert deliver(task).status == S.RETRYING
    release_when_due(task)
    outcome = deliver(task)
    assert outcome.status == S.FAILED
    assert outcome.dead_letter
    task.refresh_from_db()
    assert task.finished_at is not None
    assert "planned failure 2" in task.error


def test_max_retries_zero_fails_on_the_first_error(user):
    task = create_task(user, "test_flaky", {"fail_times": 1}, max_retries=0)
    assert deliver(task).status == S.FAILED


def test_a_permanent_error_fails_at_once_with_the_handlers_message(user):
    task = create_task(user, "test_permanent", {}, max_retries=5)
    outcome = deliver(task)
    assert outcome.status == S.FAILED and outcome.dead_letter
    task.refresh_from_db()
    assert task.error == "this input can never work"
    assert task.attempts == 1


def test_a_result_that_is_not_json_fails_clearly(user):
    task = create_task(user, "test_bad_result", {})
    assert deliver(task).status == S.FAILED
    task.refresh_from_db()
    assert "not JSON" in task.error


def test_an_unknown_type_in_the_database_fails_clearly(user):
    task = create_task(user)
    Task.objects.filter(id=task.id).update(type="removed_type")
    assert deliver(task).status == S.FAILED
    task.refresh_from_db()
    assert "removed_type" in task.error


def test_a_redelivered_message_of_a_running_task_means_the_worker_was_lost(user):
    task = create_task(user, max_retries=2)
    # The first delivery claimed it, and its worker died before finishing.
    services_claim = handle_delivery  # noqa: F841  (documentation: the claim is what deliver does)
    Task.objects.filter(id=task.id).update(status=S.RUNNING, attempts=1)
    TaskAttempt.objects.create(task=task, number=1, started_at=timezone.now())
    outcome = deliver(task, redelivered=True)
    assert (outcome.action, outcome.status) == ("lost", S.RETRYING)
    attempt = TaskAttempt.objects.get(task=task, number=1)
    assert attempt.outcome == AttemptOutcome.LOST
    assert "worker lost" in attempt.error


def test_a_duplicate_not_redelivered_message_of_a_running_task_is_dropped(user):
    task = create_task(user)
    Task.objects.filter(id=task.id).update(status=S.RUNNING, attempts=1)
    outcome = deliver(task, redelivered=False)
    assert outcome.action == "dropped"
    task.refresh_from_db()
    assert task.status == S.RUNNING


def test_a_message_that_kills_its_worker_every_time_ends_dead_lettered(user):
    """Each redelivery after a crash uses up one attempt; the last one dead-letters."""
    task = create_task(user, "test_crash", {}, max_retries=2)
    for expected in (S.RETRYING, S.RETRYING, S.FAILED):
        task.refresh_from_db()
        # A delivery claims the task, then the process dies (simulated by not running it).
        Task.objects.filter(id=task.id).update(status=S.RUNNING, attempts=task.attempts + 1)
        TaskAttempt.objects.create(task=task, number=task.attempts + 1, started_at=timezone.now())
        outcome = deliver(task, redelivered=True)
        assert outcome.status == expected
        if expected == S.RETRYING:
            release_when_due(task)
    assert outcome.dead_letter
    task.refresh_from_db()
    assert task.attempts == 3


def test_a_late_finish_of_a_settled_attempt_changes_nothing(user):
    task = create_task(user, max_retries=1)
    deliver_claim = Task.objects.filter(id=task.id)
    deliver_claim.update(status=S.RUNNING, attempts=1)
    TaskAttempt.objects.create(task=task, number=1, started_at=timezone.now())
    first = attempt_lost(task_id=task.id, attempt=1, reason="reaped")
    assert first is not None
    assert first.status == S.RETRYING
    # The attempt's worker wakes up and tries to record its end: refused, attempt 1 is settled.
    assert attempt_lost(task_id=task.id, attempt=1, reason="again") is None
    task.refresh_from_db()
    assert (task.status, task.retries) == (S.RETRYING, 1)


def test_expired_leases_are_reaped_into_a_retry(user, broker):
    task = create_task(user, max_retries=1)
    Task.objects.filter(id=task.id).update(
        status=S.RUNNING, attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=1)
    )
    TaskAttempt.objects.create(task=task, number=1, started_at=timezone.now())
    assert services.reap_expired_leases() == 1
    task.refresh_from_db()
    assert task.status == S.RETRYING
    assert "lease expired" in task.error


def _expired_leases(
    user, count: int, task_type: str = "echo", payload: dict[str, Any] | None = None
) -> list[Task]:
    tasks = [create_task(user, task_type, payload or {}, max_retries=3) for _ in range(count)]
    for task in tasks:
        Task.objects.filter(id=task.id).update(
            status=S.RUNNING, attempts=1, lease_expires_at=timezone.now() - timedelta(seconds=60)
        )
        TaskAttempt.objects.create(task=task, number=1, started_at=timezone.now())
    return tasks


def test_one_task_that_cannot_be_settled_does_not_stop_the_reaper(user, monkeypatch, caplog):
    """Regression: reap_expired_leases had no error handling per task, so one task whose retry
    could not be recorded (a type's backoff overflowing datetime) ended every beat tick there, and
    every expired lease behind it stayed running for ever. It is logged, the others reaped."""
    tasks = _expired_leases(user, 5)
    broken = tasks[2].id
    settle = execution.attempt_lost

    def attempt_lost_but_one(**kwargs: Any) -> Any:
        if kwargs["task_id"] == broken:
            raise OverflowError("date value out of range")
        return settle(**kwargs)

    monkeypatch.setattr(execution, "attempt_lost", attempt_lost_but_one)
    assert services.reap_expired_leases() == 4
    statuses = dict(Task.objects.filter(id__in=[t.id for t in tasks]).values_list("id", "status"))
    assert statuses.pop(broken) == S.RUNNING  # tried again at the next tick
    assert set(statuses.values()) == {S.RETRYING}
    logged = [r for r in caplog.records if "Could not settle the expired lease" in r.getMessage()]
    assert logged and str(broken) in logged[0].getMessage() and logged[0].exc_info


def test_an_expired_lease_of_a_type_with_a_huge_backoff_is_reaped(user):
    row = TaskType.objects.get(name="test_flaky")
    row.backoff_base_seconds = row.backoff_cap_seconds = 1e15
    task_type_save(task_type=row)
    tasks = [*_expired_leases(user, 2), *_expired_leases(user, 1, "test_flaky", {"fail_times": 5})]
    assert services.reap_expired_leases() == 3
    assert set(
        Task.objects.filter(id__in=[t.id for t in tasks]).values_list("status", flat=True)
    ) == {S.RETRYING}


@pytest.mark.django_db(transaction=True)  # the create's message is published on commit
def test_the_lease_outlasts_the_time_limit_the_message_carries(user, broker, settings):
    """Regression: the claim computed the lease from the type's limit *now*. Staff lowered a
    type's time limit (1 s) while a task of it was queued; its message carries the limit it was
    published with (the platform's 960 s), which the worker enforces, but the lease was 1 + 60 s:
    the reaper took the live attempt for lost and a retry ran beside it."""
    from types import SimpleNamespace

    from celery.app.task import Context

    from apps.tasks.tasks import execute, message_time_limit

    task = create_task(user, "test_sleep", {"seconds": 100}, max_retries=3)
    message = broker.peek("default")
    row = TaskType.objects.get(name="test_sleep")
    row.time_limit_seconds = 1
    task_type_save(task_type=row)  # the admin's save
    spec = get_task_type("test_sleep")
    assert spec is not None and spec.time_limit_seconds == 1

    # What tasks.execute passes down: the limit the worker enforces on this message.
    carried = SimpleNamespace(
        request=Context(timelimit=message.headers["timelimit"]),
        time_limit=execute.time_limit,
        app=execute.app,
    )
    limit = message_time_limit(carried)
    assert limit is not None and limit == settings.CELERY_TASK_TIME_LIMIT
    before = timezone.now()
    claimed = execution._claim(
        task_id=str(task.id),
        dispatch_id=str(task.dispatch_id),
        spec=spec,
        worker="w1",
        task_type=task.type,
        time_limit=limit,
    )
    assert claimed is not None
    task.refresh_from_db()
    assert task.lease_expires_at is not None
    assert task.lease_expires_at >= before + timedelta(seconds=limit)
    assert services.reap_expired_leases() == 0


def test_a_message_time_limit_is_the_carried_one_else_the_default(db, settings):
    from types import SimpleNamespace

    from celery.app.task import Context

    from apps.tasks.tasks import execute, message_time_limit

    def limit(timelimit: Any) -> float | None:
        request = Context(timelimit=timelimit)
        return message_time_limit(
            SimpleNamespace(request=request, time_limit=execute.time_limit, app=execute.app)
        )

    assert limit([110, 85]) == 110  # a batch of 4 of a 20 s type: 4 x 20 + 30
    assert limit([None, None]) == settings.CELERY_TASK_TIME_LIMIT
    assert limit(None) == settings.CELERY_TASK_TIME_LIMIT
    spec = get_task_type("test_batched")
    # The message's limit already covers all of a batch's tasks; without one, the type's.
    assert execution._lease_seconds(spec, tasks=4, time_limit=110) == 110 + 60
    assert execution._lease_seconds(spec, tasks=4) == 4 * 20 + 60


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_task_stops_it_cooperatively(user):
    task = create_task(user, "test_sleep", {"seconds": 30})
    outcomes = []

    def run() -> None:
        try:
            outcomes.append(deliver(task))
        finally:
            connection.close()

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: Task.objects.get(id=task.id).status == S.RUNNING, what="the task to run")
    cancelled = services.task_cancel(task=task, actor=user)
    assert cancelled.status == S.RUNNING and cancelled.cancel_requested_at is not None
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert outcomes[0].status == S.CANCELLED
    task.refresh_from_db()
    assert task.status == S.CANCELLED
    assert TaskAttempt.objects.get(task=task).outcome == AttemptOutcome.CANCELLED


def test_long_computation_reports_progress(user, django_assert_max_num_queries):
    task = create_task(user, "long_computation", {"duration": 0.3})
    assert deliver(task).status == S.SUCCEEDED
    task.refresh_from_db()
    assert task.progress == 100
    assert task.result == {"message": "Long computation completed successfully", "duration": 0.3}


@pytest.mark.parametrize("retry_number", [1, 2, 3, 10, 30])
def test_backoff_is_full_jitter_under_an_exponential_cap(retry_number):
    ceiling = min(100.0, 2.0 * 2 ** (retry_number - 1))
    delays = [retry_delay(retry_number, base=2.0, cap=100.0).total_seconds() for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling / 2  # spread over the whole window, not a fixed wait


def test_a_cancel_request_wins_over_a_retry(user):
    task = create_task(user, "test_flaky", {"fail_times": 3}, max_retries=3)
    Task.objects.filter(id=task.id).update(status=S.RUNNING, attempts=1)
    TaskAttempt.objects.create(task=task, number=1, started_at=timezone.now())
    services.task_cancel(task=task, actor=user)  # running: only asks
    result = attempt_lost(task_id=task.id, attempt=1, reason="worker lost")
    assert result is not None
    assert result.status == S.CANCELLED
    task.refresh_from_db()
    assert task.status == S.CANCELLED
    assert task.retries == 0


def _lock_waiters() -> int:
    """Backends of this test database that wait for a row lock now."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return int(cursor.fetchone()[0])


def _in_thread(target: Callable[[], Any], results: list[Any]) -> threading.Thread:
    def run() -> None:
        try:
            results.append(target())
        except BaseException as exc:
            results.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("message_form", ["typed"])  # no message is delivered: once is enough
@pytest.mark.parametrize("settled_by", ["handler error", "worker lost", "lease expired"])
def test_a_cancel_committed_while_a_failed_attempt_is_settled_is_not_lost(
    user, settled_by, message_form
):
    """Regression: _retry_or_fail read cancel_requested_at, then moved running -> retrying on
    `attempts = n` alone. A cancel committed in between was acknowledged (cancel_requested set)
    and lost: the task was released and ran again. Made deterministic: the cancel's transaction
    holds the row lock, so the settling statement waits for its commit, after the read."""
    task = create_task(user, "test_flaky", {"fail_times": 1}, max_retries=3)
    spec = get_task_type("test_flaky")
    claimed = execution._claim(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), spec=spec, worker="w1"
    )
    assert claimed is not None  # attempt 1 is running
    settlers: dict[str, Callable[[], object]] = {
        "handler error": lambda: execution.run_claimed(claimed.task, spec),
        # What a redelivered message does once it has read the row (its claim would wait too).
        "worker lost": lambda: attempt_lost(task_id=task.id, attempt=1, reason="worker lost"),
        "lease expired": services.reap_expired_leases,
    }
    settle = settlers[settled_by]
    if settled_by == "lease expired":
        Task.objects.filter(id=task.id).update(lease_expires_at=timezone.now() - timedelta(1))

    written, commit = threading.Event(), threading.Event()

    def cancel() -> Task:
        with transaction.atomic():
            cancelled = services.task_cancel(task=Task.objects.get(id=task.id), actor=user)
            written.set()
            assert commit.wait(10)
        return cancelled

    cancel_result: list[Any] = []
    canceller = _in_thread(cancel, cancel_result)
    assert written.wait(10)
    settle_result: list[Any] = []
    settler = _in_thread(settle, settle_result)
    wait_for(lambda: _lock_waiters() >= 1, timeout=10, what="the settling move to wait")
    commit.set()
    canceller.join(10)
    settler.join(10)
    assert cancel_result[0].status == S.RUNNING  # the API answered: cancel requested
    assert cancel_result[0].cancel_requested_at is not None
    assert not isinstance(settle_result[0], BaseException), settle_result[0]

    task.refresh_from_db()
    assert (task.status, task.attempts, task.retries) == (S.CANCELLED, 1, 0)
    assert task.finished_at is not None and task.lease_expires_at is None
    attempt = TaskAttempt.objects.get(task=task)
    expected = AttemptOutcome.FAILED if settled_by == "handler error" else AttemptOutcome.LOST
    assert (attempt.outcome, attempt.finished_at is not None) == (expected, True)
    last = TaskStatusChange.objects.filter(task=task).order_by("-id").first()
    assert last is not None
    assert (last.from_status, last.to_status) == (S.RUNNING, S.CANCELLED)
    assert "cancelled on request, not retried" in last.note
    assert services.release_due_tasks() == 0  # nothing to run again
