"""The per-call soft time limit a batched message's tasks get (apps.tasks.soft_limit)."""

import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from apps.tasks.soft_limit import soft_time_limit


@pytest.fixture
def no_other_timer() -> Iterator[None]:
    """pytest-timeout's SIGALRM timer set aside for the test, then put back."""
    saved_timer = signal.setitimer(signal.ITIMER_REAL, 0)
    saved_handler = signal.getsignal(signal.SIGALRM)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, saved_handler)
        if saved_timer[0]:
            signal.setitimer(signal.ITIMER_REAL, *saved_timer)


def test_a_block_past_its_limit_gets_soft_time_limit_exceeded(no_other_timer: None) -> None:
    armed: list[bool] = []

    def hang() -> None:
        with soft_time_limit(0.2) as was_armed:
            armed.append(was_armed)
            time.sleep(5)  # what the limit interrupts

    before = signal.getsignal(signal.SIGALRM)
    started = time.monotonic()
    with pytest.raises(SoftTimeLimitExceeded):
        hang()
    assert 0.2 <= time.monotonic() - started < 2
    assert armed == [True]
    assert signal.getsignal(signal.SIGALRM) is before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_timer_due_first_is_left_alone(no_other_timer: None) -> None:
    def other(signum: int, frame: Any) -> None:
        pass

    signal.signal(signal.SIGALRM, other)
    signal.setitimer(signal.ITIMER_REAL, 100)
    with soft_time_limit(200) as armed:
        assert not armed
        assert signal.getsignal(signal.SIGALRM) is other
    assert signal.getsignal(signal.SIGALRM) is other
    assert 99 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100


def test_outside_the_main_thread_no_limit_is_armed() -> None:
    """Celery's threads pool: signal handlers run only in the main thread, so the message's
    limit (none, in that pool) is all a task gets."""
    armed: list[bool] = []
    before = signal.getitimer(signal.ITIMER_REAL)

    def run() -> None:
        with soft_time_limit(0.1) as was_armed:
            armed.append(was_armed)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=10)
    assert armed == [False]
    assert signal.getitimer(signal.ITIMER_REAL)[0] <= before[0]
