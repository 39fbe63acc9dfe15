"""Shared helpers for the fault-injection tests: many tasks, then count every one."""

from collections import Counter
from collections.abc import Iterable
from typing import Any

import pytest

from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import FINAL_STATES, TaskStatus
from tests.support.wait import wait_for


def all_final(task_ids: Iterable[Any], *, timeout: float = 120) -> None:
    ids = list(task_ids)

    def done() -> bool:
        return not Task.objects.filter(id__in=ids).exclude(status__in=FINAL_STATES).exists()

    wait_for(done, timeout=timeout, interval=0.2, what=f"{len(ids)} tasks to finish")


def assert_each_succeeded_once(task_ids: Iterable[Any]) -> None:
    ids = list(task_ids)
    statuses = Counter(Task.objects.filter(id__in=ids).values_list("status", flat=True))
    assert statuses == {TaskStatus.SUCCEEDED: len(ids)}, statuses
    successes = Counter(
        TaskStatusChange.objects.filter(
            task_id__in=ids, to_status=TaskStatus.SUCCEEDED
        ).values_list("task_id", flat=True)
    )
    assert len(successes) == len(ids)
    assert set(successes.values()) == {1}, "a task succeeded more than once"


def marker_runs(marker: Any) -> Counter[str]:
    """How many times each task's handler body started (one line per start)."""
    return Counter(line.split()[0] for line in marker.read_text().splitlines() if line.strip())


@pytest.fixture
def marker(tmp_path: Any) -> Any:
    path = tmp_path / "runs.txt"
    path.touch()
    return path
