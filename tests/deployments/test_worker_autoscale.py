"""The Procfile's io worker grows its pool under load between IO_WORKER_MIN and IO_WORKER_MAX
(seed 003's autoscaling), and answers the container health check by its node name.

Celery's threads pool cannot do this (it has no grow/shrink: `--autoscale` with `--pool threads`
fails with AttributeError on the first scale-up), hence a prefork pool."""

import subprocess
import sys
from datetime import datetime

import pytest

from apps.tasks import services
from apps.tasks.models import Task, TaskAttempt
from apps.tasks.states import TaskStatus
from tests.deployments.support import DEPLOYMENTS
from tests.support import processes
from tests.support.wait import wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """The largest number of intervals running at one instant."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_max_overlap():
    t = [datetime(2026, 1, 1, 0, 0, s) for s in range(6)]  # noqa: DTZ001 (arithmetic only)
    assert max_overlap([(t[0], t[2]), (t[1], t[3]), (t[4], t[5])]) == 2
    assert max_overlap([(t[0], t[1]), (t[1], t[2])]) == 1  # one ends as the next starts


def test_the_io_worker_grows_from_its_minimum_to_its_maximum_under_load(user, broker):
    with processes.running("worker-io", IO_WORKER_MIN="1", IO_WORKER_MAX="4") as started:
        worker = started["worker-io"]
        tasks = [
            services.task_create(owner=user, type="long_computation", payload={"duration": 2})[0]
            for _ in range(8)
        ]
        wait_for(
            lambda: Task.objects.filter(status=TaskStatus.SUCCEEDED).count() == len(tasks),
            timeout=60,
            what="every io task to succeed",
        )
        assert "Scaling up" in worker.log()

        # The container health check finds this worker by the node name the Procfile gives it.
        env = processes.test_environment()
        check = [sys.executable, str(DEPLOYMENTS / "healthcheck.py"), "worker"]
        alive = subprocess.run([*check, "worker-io"], env=env, capture_output=True, text=True)
        assert alive.returncode == 0, alive.stdout + alive.stderr
        assert alive.stdout.startswith("worker worker-io@")
        absent = subprocess.run([*check, "worker-absent"], env=env, capture_output=True, text=True)
        assert absent.returncode == 1
        assert "did not answer a ping" in absent.stdout

    attempts = [
        (started, finished)
        for started, finished in TaskAttempt.objects.values_list("started_at", "finished_at")
        if finished is not None
    ]
    assert len(attempts) == len(tasks)
    # Started with one process: more than one task at a time means the pool grew; never past 4.
    assert 3 <= max_overlap(attempts) <= 4
