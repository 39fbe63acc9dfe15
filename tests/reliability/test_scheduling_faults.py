"""beat twice at once, beat restarted, a worker killed during a retry wait."""

import signal
from datetime import timedelta

import pytest

from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TaskStatus
from tests.reliability.conftest import all_final, assert_each_succeeded_once
from tests.support import processes
from tests.support.wait import wait_for
from tests.tasks.factories import create_postponed_tasks, create_task

pytestmark = [pytest.mark.django_db(transaction=True)]
S = TaskStatus


def test_two_beats_release_each_postponed_task_once(user, broker):
    tasks, run_at = create_postponed_tasks(
        user, "echo", ({"n": n} for n in range(300)), due_in=timedelta(seconds=4)
    )
    ids = [t.id for t in tasks]
    env = processes.test_environment(WORKER_CONCURRENCY="3")
    with processes.running("worker", WORKER_CONCURRENCY="3"):
        first = processes.start("beat", env=env)
        second = processes.start("beat", env=env)
        try:
            all_final(ids, timeout=120)
        finally:
            first.stop()
            second.stop()
    assert_each_succeeded_once(ids)
    releases = TaskStatusChange.objects.filter(task_id__in=ids, note="released")
    assert releases.count() == 300
    started = list(Task.objects.filter(id__in=ids).values_list("started_at", flat=True))
    assert all(s is not None and s >= run_at for s in started)


def test_a_retry_wait_survives_a_killed_worker_and_a_restarted_beat(user, broker):
    env = processes.test_environment(WORKER_CONCURRENCY="2")
    worker = processes.start("worker", env=env)
    beat = processes.start("beat", env=env)
    task = create_task(user, "test_flaky", {"fail_times": 1, "retry_after": 3})
    wait_for(lambda: Task.objects.get(id=task.id).status == S.RETRYING, what="the retry wait")
    worker.kill_group(signal.SIGKILL)
    worker.stop()
    beat.stop()
    worker = processes.start("worker", env=env)
    beat = processes.start("beat", env=env)
    try:
        all_final([task.id], timeout=60)
    finally:
        worker.stop()
        beat.stop()
    task.refresh_from_db()
    assert task.status == S.SUCCEEDED
    assert task.result == {"succeeded_on_attempt": 2}
    assert TaskStatusChange.objects.filter(task=task, note="released").count() == 1


def test_sigterm_to_beat_and_the_dead_letter_consumer_under_load_loses_nothing(user, broker):
    env = processes.test_environment(WORKER_CONCURRENCY="2")
    good, _ = create_postponed_tasks(
        user, "echo", ({"n": n} for n in range(100)), due_in=timedelta(seconds=2)
    )
    bad = [create_task(user, "test_permanent", {"n": n}) for n in range(30)]
    with processes.running("worker", WORKER_CONCURRENCY="2"):
        first = {name: processes.start(name, env=env) for name in ("beat", "deadletters")}
        try:
            wait_for(
                lambda: Task.objects.filter(dead_lettered_at__isnull=False).exists(),
                what="some dead letters recorded",
            )
        finally:  # stopped whatever happens: a consumer left running takes later tests' letters
            exits = processes.stop_all(first)
        assert exits == {"beat": 0, "deadletters": 0}
        beat = processes.start("beat", env=env)
        dead = processes.start("deadletters", env=env)
        try:
            all_final([t.id for t in good + bad], timeout=120)
            wait_for(
                lambda: (
                    Task.objects.filter(
                        id__in=[t.id for t in bad], dead_lettered_at__isnull=False
                    ).count()
                    == len(bad)
                ),
                what="every failed task recorded as dead-lettered",
            )
        finally:
            beat.stop()
            dead.stop()
    assert_each_succeeded_once([t.id for t in good])
