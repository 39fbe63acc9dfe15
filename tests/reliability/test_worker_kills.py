"""kill -9 a worker's child process, then the whole worker, with hundreds of tasks in flight."""

import signal
import subprocess

import pytest

from apps.tasks.models import AttemptOutcome, Task, TaskAttempt
from apps.tasks.states import TaskStatus
from tests.reliability.conftest import all_final, assert_each_succeeded_once, marker_runs
from tests.support import processes
from tests.support.wait import wait_for
from tests.tasks.factories import create_task

pytestmark = [pytest.mark.django_db(transaction=True)]
S = TaskStatus


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(line) for line in out.stdout.split()]


def test_kill_9_of_a_child_then_of_the_whole_worker_loses_nothing(user, broker, marker):
    env = processes.test_environment(WORKER_CONCURRENCY="3")
    with processes.running("beat"):
        worker = processes.start("worker", env=env)
        tasks = [
            create_task(user, "test_sleep", {"seconds": 0.1, "marker": str(marker)}, max_retries=5)
            for _ in range(250)
        ]
        ids = [t.id for t in tasks]

        def succeeded() -> int:
            return Task.objects.filter(id__in=ids, status=S.SUCCEEDED).count()

        wait_for(lambda: succeeded() >= 30, timeout=60, what="a first batch")
        pool_children = children_of(worker.pid)
        assert pool_children, "the prefork worker has no children?"
        subprocess.run(["kill", "-9", str(pool_children[0])], check=True)
        wait_for(lambda: succeeded() >= 100, timeout=90, what="progress after the child kill")
        worker.kill_group(signal.SIGKILL)  # the whole worker: main process and children
        worker.stop()
        worker = processes.start("worker", env=env)
        try:
            all_final(ids, timeout=180)
        finally:
            worker.stop()

    assert_each_succeeded_once(ids)
    runs = marker_runs(marker)
    assert set(runs) == {str(i) for i in ids}
    lost = TaskAttempt.objects.filter(task_id__in=ids, outcome=AttemptOutcome.LOST)
    rerun = {task_id for task_id, count in runs.items() if count > 1}
    assert rerun <= {str(t) for t in lost.values_list("task_id", flat=True)}
    assert lost.count() >= 1  # the kills did hit running attempts
