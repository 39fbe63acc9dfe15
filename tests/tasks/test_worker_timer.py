"""The worker drops the time-limit timers of finished tasks (apps/tasks/worker_timer.py)."""

import heapq

from kombu.asynchronous.timer import Timer

from apps.tasks.worker_timer import CompactTimerStep, drop_cancelled_timers
from taskflow.celery import app


def test_cancelled_entries_leave_the_heap_and_the_rest_still_fire_in_order():
    timer = Timer()
    fired: list[int] = []
    entries = [timer.call_after(1000 + i, fired.append, (i,)) for i in range(10)]
    for entry in entries[::2]:
        timer.cancel(entry)  # what Celery does when a task ends before its time limit
    assert len(timer) == 10  # kombu keeps cancelled entries until they are due

    assert drop_cancelled_timers(timer) == 5
    assert len(timer) == 5
    heap = timer._queue
    assert all(heap[(i - 1) // 2][0] <= heap[i][0] for i in range(1, len(heap)))  # still a heap
    for event in heapq.nsmallest(len(heap), heap):
        event.entry()
    assert fired == [1, 3, 5, 7, 9]
    assert drop_cancelled_timers(timer) == 0


def test_the_worker_runs_the_compaction_step():
    assert CompactTimerStep in app.steps["worker"]
