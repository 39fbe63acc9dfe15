"""Keep the worker main process's timer heap small.

Celery's prefork pool arms a timer in the main process for every task with a time limit (the soft
limit, then the hard one) and cancels it when the task ends. kombu's timer only *marks* a cancelled
entry; the entry stays in its heap until its due time. With TaskFlow's limits (900 s soft, 960 s
hard) every task thus leaves ~0.5 KB in the heap for a quarter of an hour: at 300 tasks/s that is
~90,000 dead entries and ~50 MB (measured: `make bench`'s memory section, docs/benchmarks.md; a bare
Celery worker with the same limits grows the same way, one without limits does not). Every
COMPACT_EVERY_SECONDS the worker drops the cancelled entries.
"""

import heapq
from typing import Any

from celery import bootsteps

COMPACT_EVERY_SECONDS = 30.0


def drop_cancelled_timers(timer: Any) -> int:
    """Remove the cancelled entries of a kombu Timer's heap, in place (the timer's iterator holds
    the same list and reads its head afresh on every step). Returns how many were removed."""
    queue = timer._queue
    live = [event for event in queue if not event.entry.canceled]
    removed = len(queue) - len(live)
    if removed:
        heapq.heapify(live)
        queue[:] = live
    return removed


class CompactTimerStep(bootsteps.StartStopStep):
    """Worker bootstep: compact the event loop's timer every COMPACT_EVERY_SECONDS."""

    requires = ("celery.worker.components:Hub",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        hub = getattr(parent, "hub", None)
        if hub is not None:  # the event loop (prefork and the other asynchronous pools)
            self.tref = hub.call_repeatedly(COMPACT_EVERY_SECONDS, drop_cancelled_timers, hub.timer)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
