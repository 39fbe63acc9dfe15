"""The rollups kept by the triggers on tasks_task: counts, events, histograms, and the fold."""

import math
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from apps.monitoring import rollups, selectors
from apps.monitoring.models import HISTOGRAM_BOUNDS, TaskCount, TaskMinuteStat, TaskTotal
from apps.tasks import execution, services
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.tasks.factories import create_task, make_task

S = TaskStatus
pytestmark = pytest.mark.django_db


def deliver(task: Task) -> str:
    """What a worker does with the task's message, in this process."""
    task.refresh_from_db()
    outcome = execution.handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="t@h"
    )
    return outcome.status or ""


def counts() -> dict[str, dict[str, int]]:
    return selectors.task_counts(owner_id=None)


def test_the_sql_histogram_buckets_are_the_python_ones():
    with connection.cursor() as cursor:
        for index, bound in enumerate(HISTOGRAM_BOUNDS):
            value = 1e12 if math.isinf(bound) else bound
            cursor.execute("SELECT monitoring_histogram(%s)", [value])
            (vector,) = cursor.fetchone()
            assert len(vector) == len(HISTOGRAM_BOUNDS)
            assert vector.index(1) == index, bound
            assert sum(vector) == 1


def test_histogram_of_null_is_null_and_of_nan_is_all_zeros():
    with connection.cursor() as cursor:
        cursor.execute("SELECT monitoring_histogram(NULL), monitoring_histogram('NaN')")
        empty, nan = cursor.fetchone()
    assert empty is None
    assert nan == [0] * len(HISTOGRAM_BOUNDS)


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        ([1, 2, 3], [10, 20, 30], [11, 22, 33]),
        ([1, 2, 3], [1], [2, 2, 3]),  # the shorter one counts as padded with zeros
        ([1], [1, 2, 3], [2, 2, 3]),
        ([1, None], [None, 5], [1, 5]),
        (None, [4, 5], [4, 5]),
        ([4, 5], None, [4, 5]),
        ([], [], []),
    ],
)
def test_array_add_adds_element_by_element(left, right, expected):
    with connection.cursor() as cursor:
        cursor.execute("SELECT monitoring_array_add(%s::bigint[], %s::bigint[])", [left, right])
        assert cursor.fetchone()[0] == expected


def test_array_sum_adds_the_arrays_of_a_column():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT monitoring_array_sum(v) FROM (VALUES (%s::bigint[]), (NULL), (%s)) AS t(v)",
            [[1, 2], [3, 4, 5]],
        )
        assert cursor.fetchone()[0] == [4, 6, 5]


def test_counts_follow_create_every_move_and_delete(user, other_user):
    echo = create_task(user, "echo", {"n": 1})
    create_task(user, "echo", {"n": 2}, run_at=timezone.now() + timedelta(hours=1))
    create_task(other_user, "test_permanent", {})
    assert counts() == {"echo": {"queued": 1, "postponed": 1}, "test_permanent": {"queued": 1}}

    assert deliver(echo) == S.SUCCEEDED
    failing = Task.objects.get(type="test_permanent")
    assert deliver(failing) == S.FAILED
    assert counts() == {
        "echo": {"succeeded": 1, "postponed": 1},
        "test_permanent": {"failed": 1},
    }
    # One owner's view.
    assert selectors.task_counts(owner_id=other_user.id) == {"test_permanent": {"failed": 1}}

    services.task_retry(task=failing, actor=other_user)
    services.task_delete(task=echo)
    assert counts() == {"echo": {"postponed": 1}, "test_permanent": {"queued": 1}}

    # Whatever the path (here the ORM's bulk delete, as the admin and a user's cascade do).
    Task.objects.all().delete()
    assert counts() == {}
    assert TaskCount.objects.count() > 0  # rows stay, at zero


def test_events_and_timings_of_the_minute(user):
    create_task(user, "echo", {"n": 1})
    flaky = create_task(user, "test_flaky", {"fail_times": 1}, max_retries=1)
    for task in Task.objects.filter(type="echo"):
        deliver(task)
    assert deliver(flaky) == S.RETRYING
    services.release_due_tasks()  # the backoff of the test settings is a few milliseconds at most
    flaky.refresh_from_db()
    if flaky.status == S.RETRYING:  # not due yet: make it due
        Task.objects.filter(id=flaky.id).update(run_at=timezone.now() - timedelta(seconds=1))
        services.release_due_tasks()
    assert deliver(flaky) == S.SUCCEEDED

    events = selectors.window_events(owner_id=user.id, now=timezone.now())
    assert events["echo"].events == {
        "created": 1,
        "started": 1,
        "succeeded": 1,
        "failed": 0,
        "retried": 0,
        "cancelled": 0,
        "dead_lettered": 0,
        "replayed": 0,
    }
    flaky_events = events["test_flaky"]
    assert flaky_events.events["started"] == 2
    assert flaky_events.events["retried"] == 1
    assert flaky_events.events["succeeded"] == 1
    # Two attempts waited in the queue and two ran (the failed one included).
    assert flaky_events.wait.count == 2
    assert flaky_events.run.count == 2
    assert sum(flaky_events.run.buckets) == 2
    assert 0 <= flaky_events.run.sum < 60
    assert flaky_events.run.summary()["p50"] is not None

    # Nothing in another owner's view.
    assert selectors.window_events(owner_id=user.id + 1000, now=timezone.now()) == {}


def test_dead_letters_replays_and_lost_attempts_are_counted(user):
    task = create_task(user, "test_flaky", {"fail_times": 5}, max_retries=0)
    task.refresh_from_db()
    # Claimed, then its worker vanished: the attempt is lost (no run time), and out of retries.
    claimed = execution.transition_one(
        task_id=task.id,
        to=S.RUNNING,
        allowed_from={S.QUEUED},
        changes={"attempts": execution.Sql("t.attempts + 1")},
        attempt=execution.AttemptStart(worker="gone@h"),
    )
    assert claimed is not None
    lost = execution.attempt_lost(task_id=task.id, attempt=1, reason="worker lost")
    assert lost is not None and lost.status == S.FAILED
    assert services.task_record_dead_letter(
        task_id=task.id, dispatch_id=None, reason="rejected", at=timezone.now()
    )
    services.task_retry(task=Task.objects.get(id=task.id), actor=user)

    item = selectors.window_events(owner_id=None, now=timezone.now())["test_flaky"]
    assert item.events["failed"] == 1
    assert item.events["dead_lettered"] == 1
    assert item.events["replayed"] == 1
    assert item.events["started"] == 1
    assert item.wait.count == 1
    assert item.run.count == 0  # a lost attempt's time is not a run time


def test_fold_moves_old_minutes_into_totals_and_totals_never_drop(user):
    for n in range(3):
        deliver(create_task(user, "echo", {"n": n}))
    before = selectors.total_events()["echo"]
    assert before.events["succeeded"] == 3

    # Pretend those minutes are old, then fold them.
    TaskMinuteStat.objects.update(minute=timezone.now() - timedelta(hours=3))
    assert rollups.fold_minute_stats() >= 1
    assert not TaskMinuteStat.objects.exists()
    assert TaskTotal.objects.get(type="echo").succeeded == 3

    deliver(create_task(user, "echo", {"n": 9}))
    after = selectors.total_events()["echo"]
    assert after.events["succeeded"] == 4
    assert after.events["created"] == 4
    assert after.run.count == 4
    assert sum(after.run.buckets) == 4
    # The window only holds the recent minute.
    assert (
        selectors.window_events(owner_id=None, now=timezone.now())["echo"].events["succeeded"] == 1
    )


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (0.5, [0] * len(HISTOGRAM_BOUNDS), None),
        # All ten in the (0.5, 1] bucket: the median is half-way through it.
        (0.5, [0] * 9 + [10] + [0] * 12, 0.75),
        (0.99, [0] * 9 + [10] + [0] * 12, 0.995),
        # Past the last finite bound, the last finite bound is all we know.
        (0.99, [0] * 21 + [4], 5000),
    ],
)
def test_quantile(q, buckets, expected):
    value = selectors.quantile(q, buckets)
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def test_everyones_rows_are_the_sum_of_each_owners(user, other_user):
    from django.db.models import Sum

    from apps.monitoring.models import ALL_OWNERS

    for owner in (user, other_user):
        deliver(create_task(owner, "echo", {}))
        deliver(create_task(owner, "test_permanent", {}))
        create_task(owner, "echo", {"waiting": True})
    services.task_delete(task=Task.objects.filter(owner=user, status=S.SUCCEEDED).get())

    def by_key(rows: Any, *fields: str) -> dict[tuple[str, ...], int]:
        return {tuple(r[f] for f in fields): r["total"] for r in rows if r["total"]}

    everyone = TaskCount.objects.filter(owner_id=ALL_OWNERS)
    owners = TaskCount.objects.exclude(owner_id=ALL_OWNERS)
    keys = ("type", "status")
    assert by_key(everyone.values(*keys).annotate(total=Sum("n")), *keys) == by_key(
        owners.values(*keys).annotate(total=Sum("n")), *keys
    )
    minutes_everyone = TaskMinuteStat.objects.filter(owner_id=ALL_OWNERS)
    minutes_owners = TaskMinuteStat.objects.exclude(owner_id=ALL_OWNERS)
    for column in ("created", "started", "succeeded", "failed", "run_count", "wait_count"):
        assert (
            minutes_everyone.aggregate(total=Sum(column))["total"]
            == minutes_owners.aggregate(total=Sum(column))["total"]
        ), column


def test_beat_folds_the_rollups_every_few_minutes(user):
    from django_celery_beat.models import PeriodicTask

    from apps.monitoring import tasks as monitoring_tasks

    monitoring_tasks.ensure_fold_schedule()
    monitoring_tasks.ensure_fold_schedule()  # at every beat start: still one schedule
    [schedule] = PeriodicTask.objects.filter(task=monitoring_tasks.FOLD_TASK_NAME)
    assert schedule.enabled
    assert schedule.queue == "maintenance"
    assert schedule.interval.every == monitoring_tasks.FOLD_EVERY_SECONDS

    deliver(create_task(user, "echo", {}))
    TaskMinuteStat.objects.update(minute=timezone.now() - timedelta(hours=5))
    assert monitoring_tasks.fold_rollups() > 0  # what the worker runs for beat
    assert TaskTotal.objects.get(type="echo").created == 1


def _attempt_table_scans() -> tuple[int, int]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT seq_scan, coalesce(idx_scan, 0) FROM pg_stat_xact_user_tables "
            "WHERE relname = 'tasks_taskattempt'"
        )
        seq, idx = cursor.fetchone()
        return int(seq), int(idx)


def test_the_update_trigger_probes_attempts_and_never_reads_the_whole_attempt_table(user):
    # Migration 0006. Joined plainly, the trigger's attempt lookup could be planned as a hash of
    # the whole attempt table: 8 ms a status change at 15,000 attempts in a worker's session. A
    # statement moving 300 running tasks makes that plan the cheapest for a plain join here; the
    # trigger must still probe, one attempt per moved row. Before 0006 this statement also
    # crashed the PostgreSQL backend (a double free aggregating PL/pgSQL histograms).
    running = [make_task(user, status=S.RUNNING, attempts=1) for _ in range(300)]
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_taskattempt "
            "(task_id, number, outcome, worker, started_at, finished_at, error) "
            "SELECT id, 1, 'succeeded', 'w', now() - interval '2 seconds', now(), '' "
            "FROM tasks_task WHERE id = ANY(%s)",
            [[t.id for t in running]],
        )
        cursor.execute("ANALYZE tasks_taskattempt")
    seq_before, idx_before = _attempt_table_scans()
    assert Task.objects.filter(id__in=[t.id for t in running]).update(status=S.SUCCEEDED) == 300
    seq_after, idx_after = _attempt_table_scans()
    assert seq_after == seq_before
    assert idx_after - idx_before >= 300  # one probe per moved row
    stats = TaskMinuteStat.objects.filter(owner_id=user.id)
    assert sum(stats.values_list("run_count", flat=True)) == 300
    assert 600 <= sum(stats.values_list("run_sum", flat=True)) < 900  # ~2 s each
