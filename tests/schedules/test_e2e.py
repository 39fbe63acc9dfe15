"""A real beat and a real worker fire an every-2-seconds schedule, and its tasks succeed."""

import itertools
from datetime import timedelta

import pytest

from apps.schedules.models import Schedule
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.schedules.conftest import make_schedule
from tests.support import processes
from tests.support.wait import wait_for


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_beat_fires_an_interval_schedule_whose_tasks_succeed(user, broker):
    environment = processes.test_environment(
        RELEASE_INTERVAL_MS="200", SCHEDULE_MIN_INTERVAL_SECONDS="1"
    )
    started = processes.start_all(("beat", "worker"), environment)
    try:
        schedule = make_schedule(user, type="echo", payload={"tick": True}, every_seconds=2)
        succeeded = Task.objects.filter(owner=user, status=TaskStatus.SUCCEEDED)
        wait_for(lambda: succeeded.count() >= 3, timeout=60, interval=0.2, what="3 scheduled runs")
        logs = processes.dump_logs(started)
    finally:
        processes.stop_all(started)

    tasks = list(Task.objects.filter(owner=user).order_by("created_at"))
    assert all(t.type == "echo" and t.payload == {"tick": True} for t in tasks)
    assert all(t.result == {"tick": True} for t in tasks if t.status == TaskStatus.SUCCEEDED)
    keys = [t.idempotency_key for t in tasks]
    assert len(set(keys)) == len(keys), keys  # one task per due time
    assert all(str(key).startswith(f"schedule:{schedule.id}:") for key in keys)
    gaps = [b.created_at - a.created_at for a, b in itertools.pairwise(tasks)]
    # every 2 s (beat's 200 ms tick and a busy machine add jitter; no run twice, none bunched)
    assert all(timedelta(seconds=1) < gap < timedelta(seconds=4) for gap in gaps), (gaps, logs)
    schedule.refresh_from_db()
    assert schedule.last_error == ""
    assert schedule.last_task_id in {t.id for t in tasks}
    assert (Schedule.objects.get(id=schedule.id).next_run_at or tasks[0].created_at) > tasks[
        -1
    ].created_at
