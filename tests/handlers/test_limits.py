"""Cluster-wide limits per task type: the concurrency limit (PostgreSQL, in the claim) and the
rate limit (Redis). First through handle_delivery in this process, then with two real worker
processes and beat, counting what ran at once and per second."""

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from apps.handlers import limits
from apps.handlers.models import TaskType, TaskTypeKind
from apps.tasks import services
from apps.tasks.execution import DeliveryOutcome, _claim, handle_delivery
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create, deliver
from tests.support import processes
from tests.support.processes import free_port
from tests.support.wait import wait_for

S = TaskStatus


def limit(name: str, **fields: Any) -> None:
    TaskType.objects.update_or_create(name=name, defaults={"kind": TaskTypeKind.CODE, **fields})


def last_note(task: Task) -> str:
    notes = TaskStatusChange.objects.filter(task=task).order_by("at", "id")
    return str(notes.values_list("note", flat=True).last())


def deliver_in_thread(task: Task, out: list[DeliveryOutcome]) -> threading.Thread:
    def work() -> None:
        try:
            out.append(
                handle_delivery(
                    task_id=str(task.id),
                    dispatch_id=str(task.dispatch_id),
                    redelivered=False,
                    worker=f"thread-{threading.get_ident()}",
                )
            )
        finally:
            connection.close()

    thread = threading.Thread(target=work)
    thread.start()
    return thread


# --- Concurrency, in this process ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_claim_over_the_concurrency_limit_is_held_not_failed(user):
    limit("test_sleep", concurrency_limit=1)
    first = create(user, "test_sleep", {"seconds": 30})
    second = create(user, "test_sleep", {"seconds": 0}, max_retries=0)
    out: list[DeliveryOutcome] = []
    thread = deliver_in_thread(first, out)
    try:
        wait_for(lambda: Task.objects.filter(id=first.id, status=S.RUNNING).exists())

        outcome = deliver(second)

        assert (outcome.action, second.status) == ("held", S.POSTPONED)
        assert (second.attempts, second.retries, second.dispatch_id) == (0, 0, None)
        assert last_note(second) == "held: concurrency limit (1 running); waits for a free slot"
        # No time to come back at: it waits for the slot, not for a clock.
        assert second.run_at is None
        assert second.waiting_for_slot_since is not None
    finally:
        services.task_cancel(task=first, actor=None)
        thread.join(timeout=30)
    assert out[0].status == S.CANCELLED

    # The first one's worker handed its slot on as its task ended: no releaser needed.
    second.refresh_from_db()
    assert (second.status, last_note(second)) == (S.QUEUED, "released: a slot is free")
    assert deliver(second).status == S.SUCCEEDED
    assert (second.attempts, second.retries, second.waiting_for_slot_since) == (1, 0, None)


@pytest.mark.django_db(transaction=True)
def test_parallel_claims_never_pass_the_concurrency_limit(user):
    limit("test_sleep", concurrency_limit=2)
    tasks = [create(user, "test_sleep", {"seconds": 1.5}) for _ in range(8)]
    out: list[DeliveryOutcome] = []
    start = threading.Barrier(len(tasks))

    def work(task: Task) -> None:
        try:
            start.wait()
            out.append(
                handle_delivery(
                    task_id=str(task.id),
                    dispatch_id=str(task.dispatch_id),
                    redelivered=False,
                    worker="parallel",
                )
            )
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(task,)) for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert Counter(o.action for o in out) == {"ran": 2, "held": 6}
    assert Task.objects.filter(status=S.SUCCEEDED).count() == 2
    # Each of the two that ran handed its slot to the oldest task waiting; the others wait.
    held = Task.objects.filter(id__in=[t.id for t in tasks], attempts=0).order_by("created_at")
    assert [t.status for t in held] == [S.QUEUED] * 2 + [S.POSTPONED] * 4


def stuck_in_running(user: Any, count: int = 1) -> list[Task]:
    """Tasks claimed by a worker that then died: they take a slot until their lease is reaped."""
    from apps.handlers.registry import get_task_type

    stuck = [create(user, "test_sleep", {"seconds": 0}, max_retries=0) for _ in range(count)]
    for task in stuck:
        assert _claim(
            task_id=str(task.id),
            dispatch_id=str(task.dispatch_id),
            spec=get_task_type("test_sleep"),
            worker="dead",
        )
    return stuck


def reap(task: Task) -> None:
    Task.objects.filter(id=task.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.reap_expired_leases() == 1


def history_count(task: Task) -> int:
    return TaskStatusChange.objects.filter(task=task).count()


def test_a_dead_workers_slot_is_freed_when_its_attempt_is_settled(user):
    limit("test_sleep", concurrency_limit=1)
    (stuck,) = stuck_in_running(user)
    waiting = create(user, "test_sleep", {"seconds": 0})
    assert deliver(waiting).action == "held"

    reap(stuck)  # the lost attempt: failed (no retries left), not running

    assert services.release_due_tasks() == 1  # beat's releaser finds the free slot
    assert deliver(waiting).status == S.SUCCEEDED


def test_a_lost_attempt_hands_its_slot_on_when_its_message_comes_back(user):
    limit("test_sleep", concurrency_limit=1)
    (stuck,) = stuck_in_running(user)
    waiting = create(user, "test_sleep", {"seconds": 0})
    assert deliver(waiting).action == "held"

    # RabbitMQ gives the dead worker's message to another: that attempt is lost, the slot free.
    assert deliver(stuck, redelivered=True).action == "lost"

    waiting.refresh_from_db()
    assert (waiting.status, last_note(waiting)) == (S.QUEUED, "released: a slot is free")


def test_tasks_waiting_for_a_slot_are_not_churned_while_it_stays_taken(user):
    limit("test_sleep", concurrency_limit=1)
    stuck_in_running(user)
    waiting = [create(user, "test_sleep", {"seconds": 0}) for _ in range(3)]
    assert [deliver(task).action for task in waiting] == ["held"] * 3
    rows = [history_count(task) for task in waiting]
    assert rows == [2, 2, 2]  # created, held

    for _ in range(3):  # beat's ticks
        assert services.release_due_tasks() == 0

    for task in waiting:
        task.refresh_from_db()
        assert (task.status, task.run_at, task.dispatch_id) == (S.POSTPONED, None, None)
    assert [history_count(task) for task in waiting] == rows  # no hold, release, hold, ...


def test_waiting_tasks_get_free_slots_oldest_first_one_task_per_slot(user):
    limit("test_sleep", concurrency_limit=2)
    first_stuck, _second_stuck = stuck_in_running(user, 2)
    waiting = [create(user, "test_sleep", {"seconds": 0}) for _ in range(4)]
    for task in reversed(waiting):  # held newest first: the line still goes by age
        assert deliver(task).action == "held"

    reap(first_stuck)
    assert services.release_due_tasks() == 1  # one slot is free: one task
    assert services.release_due_tasks() == 0  # the released one takes it until it is claimed
    statuses = [Task.objects.get(id=t.id).status for t in waiting]
    assert statuses == [S.QUEUED, S.POSTPONED, S.POSTPONED, S.POSTPONED]

    # It runs; as it ends, its worker hands the slot to the next oldest.
    assert deliver(waiting[0]).status == S.SUCCEEDED
    statuses = [Task.objects.get(id=t.id).status for t in waiting]
    assert statuses == [S.SUCCEEDED, S.QUEUED, S.POSTPONED, S.POSTPONED]
    assert last_note(waiting[1]) == "released: a slot is free"


def test_a_task_published_while_others_wait_joins_the_line_behind_them(user):
    limit("test_sleep", concurrency_limit=1)
    (stuck,) = stuck_in_running(user)
    waiting = create(user, "test_sleep", {"seconds": 0})
    assert deliver(waiting).action == "held"
    reap(stuck)  # a slot is free, and beat's releaser has not run yet
    newcomer = create(user, "test_sleep", {"seconds": 0})

    # The newcomer does not take the slot ahead of the task waiting for it: it is held, and
    # the oldest waiting task is released in its place.
    assert deliver(newcomer).action == "held"
    waiting.refresh_from_db()
    assert (waiting.status, last_note(waiting)) == (S.QUEUED, "released: a slot is free")
    assert deliver(waiting).status == S.SUCCEEDED
    newcomer.refresh_from_db()
    assert newcomer.status == S.QUEUED  # handed the slot as the waiting one ended
    assert deliver(newcomer).status == S.SUCCEEDED


def test_a_released_task_keeps_its_slot_from_a_newcomer_claimed_before_it(user):
    limit("test_sleep", concurrency_limit=1)
    (stuck,) = stuck_in_running(user)
    waiting = create(user, "test_sleep", {"seconds": 0})
    assert deliver(waiting).action == "held"
    reap(stuck)
    assert services.release_due_tasks() == 1  # released: queued, its message not yet taken
    newcomer = create(user, "test_sleep", {"seconds": 0})

    # The newcomer's message comes first: the free slot is the released task's, not its.
    assert deliver(newcomer).action == "held"
    waiting.refresh_from_db()
    assert waiting.status == S.QUEUED
    assert deliver(waiting).status == S.SUCCEEDED
    newcomer.refresh_from_db()
    assert newcomer.status == S.QUEUED  # handed the slot as the released one ended
    assert deliver(newcomer).status == S.SUCCEEDED


def test_a_claim_does_not_read_the_whole_waiting_line_to_count_the_released_tasks(user):
    """The claim counts the type's released tasks not yet claimed (queued, marked): a handful at
    most (the limit). It read every task of the type's waiting line to find them (the line's index
    holds the postponed ones too, and the status is not in it): a claim, under the type's lock,
    cost a scan of a line of 100,000 waiting tasks, 15 ms."""
    from apps.handlers.registry import get_task_type

    limit("test_sleep", concurrency_limit=1)
    newcomer = create(user, "test_sleep", {"seconds": 0})
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO tasks_task (id, owner_id, type, payload, queue, status, max_retries,
                retries, attempts, progress, progress_message, result, error, dead_letter_reason,
                idempotency_fingerprint, created_at, updated_at, waiting_for_slot_since)
            SELECT gen_random_uuid(), %s, 'test_sleep', '{}', 'default', 'postponed', 3, 0, 0, 0,
                '', '{}', '', '', '', now() + interval '1 hour', now(), now()
            FROM generate_series(1, 20000)
            """,
            [user.id],
        )
        cursor.execute("ANALYZE tasks_task")
        spec = get_task_type("test_sleep")
        assert spec is not None
        condition, params = limits.concurrency_condition(spec)
        claim = f"SELECT 1 FROM tasks_task t WHERE t.id = %s {condition}"  # noqa: S608 (our SQL)
        values: list[Any] = [str(newcomer.id), *params]
        cursor.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {claim}", values)
        (plan,) = cursor.fetchone()[0]
    top = plan["Plan"]
    assert top["Actual Rows"] == 1  # the slot is free and nobody older waits: it would claim
    assert top["Shared Hit Blocks"] + top["Shared Read Blocks"] < 50, plan


def test_a_slot_freed_while_a_claim_was_losing_it_is_not_left_empty(user):
    from apps.handlers.registry import get_task_type
    from apps.tasks import slots

    limit("test_sleep", concurrency_limit=1)
    task = create(user, "test_sleep", {"seconds": 0})
    # Its claim lost to a task that has ended since, and whose worker found nobody waiting then:
    # the hold counts the slots again, finds this one free, and releases the task at once.
    spec = get_task_type("test_sleep")
    assert spec is not None
    assert slots.hold_for_slot(task_id=str(task.id), dispatch_id=str(task.dispatch_id), spec=spec)

    task.refresh_from_db()
    assert task.status == S.QUEUED
    assert task.dispatch_id is not None
    notes = TaskStatusChange.objects.filter(task=task).order_by("at", "id")
    assert list(notes.values_list("to_status", flat=True)) == [S.QUEUED, S.POSTPONED, S.QUEUED]
    assert deliver(task).status == S.SUCCEEDED


def test_a_waiting_task_rescheduled_or_cancelled_leaves_the_line(user):
    from apps.handlers.services import task_type_release_held

    limit("test_sleep", concurrency_limit=1)
    (stuck,) = stuck_in_running(user)
    rescheduled, cancelled = (create(user, "test_sleep", {"seconds": 0}) for _ in range(2))
    assert [deliver(rescheduled).action, deliver(cancelled).action] == ["held", "held"]
    later = timezone.now() + timedelta(hours=1)

    services.task_update(task=rescheduled, actor=user, run_at=later)
    services.task_cancel(task=cancelled, actor=user)
    assert task_type_release_held(name="test_sleep") == 0  # that is for a disabled type's tasks
    reap(stuck)

    assert services.release_due_tasks() == 0  # a free slot, and nobody in the line
    rescheduled.refresh_from_db()
    assert (rescheduled.status, rescheduled.run_at) == (S.POSTPONED, later)
    assert rescheduled.waiting_for_slot_since is None


def test_a_removed_limit_releases_every_waiting_task(user):
    limit("test_sleep", concurrency_limit=1)
    stuck_in_running(user)
    waiting = [create(user, "test_sleep", {"seconds": 0}) for _ in range(3)]
    assert [deliver(task).action for task in waiting] == ["held"] * 3

    limit("test_sleep", concurrency_limit=None)

    assert services.release_due_tasks() == 3
    assert [deliver(task).status for task in waiting] == [S.SUCCEEDED] * 3


# --- Rate, in this process -----------------------------------------------------------------------


def test_a_start_over_the_rate_limit_is_held_until_its_turn(user):
    limit("echo", rate_limit_count=1, rate_limit_period="minute")
    first = create(user, "echo", {"n": 1})
    second = create(user, "echo", {"n": 2}, max_retries=0)
    before = timezone.now()

    assert deliver(first).status == S.SUCCEEDED
    outcome = deliver(second)

    assert (outcome.action, second.status) == ("held", S.POSTPONED)
    assert (second.attempts, second.retries) == (0, 0)
    assert last_note(second) == "held: rate limit (1/min)"
    # Its turn comes a minute after the first start; the spread adds up to one more minute.
    assert second.run_at is not None
    assert before + timedelta(seconds=58) < second.run_at < before + timedelta(seconds=121)


def test_with_redis_away_the_rate_limit_fails_open_and_says_so(user, settings, caplog):
    limit("echo", rate_limit_count=1, rate_limit_period="minute")
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    tasks = [create(user, "echo", {"n": n}) for n in range(3)]

    with caplog.at_level(logging.WARNING, logger="apps.handlers.limits"):
        assert [deliver(task).status for task in tasks] == [S.SUCCEEDED] * 3

    assert caplog.text.count("Task type rate limits are NOT enforced") == 1  # once, not per task
    assert limits.fail_open.is_open()


def test_with_redis_away_and_the_limit_set_to_fail_closed_tasks_wait(user, settings, caplog):
    limit("echo", rate_limit_count=100, rate_limit_period="second")
    settings.TASKFLOW = {**settings.TASKFLOW, "RATE_LIMITS_WITHOUT_REDIS": "closed"}
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": f"redis://127.0.0.1:{free_port()}/0"},
    }
    tasks = [create(user, "echo", {"n": n}) for n in range(3)]
    before = timezone.now()

    with caplog.at_level(logging.WARNING, logger="apps.handlers.limits"):
        outcomes = [deliver(task) for task in tasks]

    assert [(o.action, t.status) for o, t in zip(outcomes, tasks, strict=True)] == [
        ("held", S.POSTPONED)
    ] * 3
    assert all(t.attempts == 0 for t in tasks)
    # Back when Redis is asked again (5 s), plus the spread (here at most 4 turns of 10 ms).
    run_ats = [t.run_at for t in tasks]
    latest = before + timedelta(seconds=6)
    assert all(at is not None and before + timedelta(seconds=0.9) < at < latest for at in run_ats)
    assert caplog.text.count("tasks of rate-limited types are HELD") == 1
    assert "NOT enforced" not in caplog.text


# --- Two real workers ---------------------------------------------------------------------------


@contextmanager
def two_workers_and_beat(**env: str) -> Iterator[dict[str, processes.Process]]:
    environment = processes.test_environment(WORKER_CONCURRENCY="4", **env)
    started = processes.start_all(("beat", "worker"), environment)
    try:
        command = processes.procfile()["worker"].replace("worker@%h", "worker2@%h")
        started["worker2"] = processes.start("worker", env=environment, command=command)
        yield started
    finally:
        processes.stop_all(started)


def run_all(user: Any, count: int, seconds: float, marker: Path) -> tuple[list[Task], str]:
    with two_workers_and_beat() as started:
        tasks = [
            create(user, "test_limited", {"seconds": seconds, "marker": str(marker)})
            for _ in range(count)
        ]
        ids = [t.id for t in tasks]
        finished = [S.SUCCEEDED, S.FAILED, S.CANCELLED]
        wait_for(
            lambda: Task.objects.filter(id__in=ids, status__in=finished).count() == count,
            timeout=120,
            interval=0.2,
            what=f"{count} tasks to finish",
        )
        logs = processes.dump_logs(started)
    return list(Task.objects.filter(id__in=ids)), logs


def runs_of(marker: Path) -> list[tuple[float, float, int]]:
    runs = []
    for line in marker.read_text().splitlines():
        _task_id, started, ended, pid = line.split()
        runs.append((float(started), float(ended), int(pid)))
    return runs


def most_at_once(runs: list[tuple[float, float, int]]) -> int:
    # An end and a start at the same instant: the end first (the slot was freed).
    events = sorted([(s, 1) for s, _, _ in runs] + [(e, -1) for _, e, _ in runs])
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_two_workers_never_run_more_than_the_concurrency_limit(user, broker, tmp_path):
    limit("test_limited", concurrency_limit=2)
    marker = tmp_path / "runs.txt"

    tasks, logs = run_all(user, count=10, seconds=0.6, marker=marker)

    assert all(t.status == S.SUCCEEDED for t in tasks), logs
    assert all((t.attempts, t.retries) == (1, 0) for t in tasks)  # holds use no retry
    runs = runs_of(marker)
    assert len(runs) == 10
    assert most_at_once(runs) == 2, sorted(runs)
    assert len({pid for _, _, pid in runs}) >= 2  # not one process doing it all in turn
    held = TaskStatusChange.objects.filter(task__in=tasks, note__startswith="held: concurrency")
    assert held.exists()
    workers = set(
        Task.objects.filter(id__in=[t.id for t in tasks])
        .values_list("attempt_rows__worker", flat=True)
        .distinct()
    )
    assert {w.split("@")[0] for w in workers} == {"worker", "worker2"}, workers


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_waiting_tasks_hold_still_then_start_in_order_as_the_slot_frees(user, broker):
    limit("test_sleep", concurrency_limit=1)
    with two_workers_and_beat() as started:
        blocker = create(user, "test_sleep", {"seconds": 120})
        wait_for(lambda: Task.objects.filter(id=blocker.id, status=S.RUNNING).exists())
        waiting = [create(user, "test_sleep", {"seconds": 0.1}) for _ in range(4)]
        ids = [t.id for t in waiting]
        wait_for(
            lambda: Task.objects.filter(id__in=ids, status=S.POSTPONED).count() == 4,
            what="the four to be held",
        )
        # beat's releaser runs after a task due 2 s from now has run: by then a task held for a
        # second, as they were before, would have come back and been held again.
        canary = create(user, "echo", {}, run_at=timezone.now() + timedelta(seconds=2))
        wait_for(
            lambda: Task.objects.filter(id=canary.id, status=S.SUCCEEDED).exists(),
            timeout=30,
            what="the releaser to have run after 2 s",
        )
        holds = TaskStatusChange.objects.filter(task__in=ids, note__startswith="held:")
        assert holds.count() == 4, list(holds.values_list("task_id", "at"))

        services.task_cancel(task=blocker, actor=None)
        wait_for(
            lambda: Task.objects.filter(id__in=ids, status=S.SUCCEEDED).count() == 4,
            timeout=60,
            what="the four to run",
        )
        logs = processes.dump_logs(started)

    ran = Task.objects.filter(id__in=ids).order_by("started_at")
    assert [t.id for t in ran] == ids, logs  # oldest first
    assert all(t.attempts == 1 for t in ran)
    assert holds.count() == 4, logs  # each held once, and never again


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_two_workers_together_keep_to_the_rate_limit(user, broker, tmp_path):
    limit("test_limited", rate_limit_count=2, rate_limit_period="second")
    marker = tmp_path / "runs.txt"

    tasks, logs = run_all(user, count=8, seconds=0, marker=marker)

    assert all(t.status == S.SUCCEEDED for t in tasks), logs
    assert all((t.attempts, t.retries) == (1, 0) for t in tasks)
    starts = sorted(started for started, _, _ in runs_of(marker))
    assert len(starts) == 8
    per_second = Counter(int(s) for s in starts)
    assert max(per_second.values()) <= 2 + 1, per_second  # N per period, +1 at a window's edge
    assert starts[-1] - starts[0] >= (8 - 1) / 2 - 0.5  # spaced about 1/2 s apart
    held = TaskStatusChange.objects.filter(task__in=tasks, note="held: rate limit (2/s)")
    assert held.exists()


def test_a_newcomer_sent_to_the_line_does_not_take_the_rate_limit_s_start(user):
    """A type with both limits: a task published while another waits for the free slot joins
    the line (first come, first served) without starting, so it must not book the rate
    limit's start either, or the waiting task it releases is held for the rate limit with
    the slot free and no task of the type started in the period."""
    limit("test_sleep", concurrency_limit=1)
    (stuck,) = stuck_in_running(user)
    waiting = create(user, "test_sleep", {"seconds": 0})
    assert deliver(waiting).action == "held"
    reap(stuck)  # a slot is free, and beat's releaser has not run yet
    limit("test_sleep", concurrency_limit=1, rate_limit_count=1, rate_limit_period="minute")
    newcomer = create(user, "test_sleep", {"seconds": 0})

    assert deliver(newcomer).action == "held"  # behind the waiting one, which is released
    assert deliver(waiting).status == S.SUCCEEDED
