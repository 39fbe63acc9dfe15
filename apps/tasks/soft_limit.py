"""A soft time limit for one handler call, inside a message that runs several (a batch).

Celery's limits are per message: the pool's main process sends SIGUSR1 to the pool process at
the soft limit (billiard raises SoftTimeLimitExceeded there) and kills it at the hard limit. A
batched message's limits are the type's times its tasks, so one task that hangs would use its
batch-mates' time. `soft_time_limit` gives each handler call of a batch its own: a one-shot
ITIMER_REAL whose SIGALRM raises the same SoftTimeLimitExceeded in the main thread.

Nothing else in a prefork pool process uses SIGALRM or ITIMER_REAL (billiard's time limits are
SIGUSR1 and SIGKILL from the main process; Celery's only SIGALRM user is the debugging helper
`celery.utils.debug.blockdetection`; ours is beat's exit-again timer, taskflow.startup, not in a
worker). SIGALRM's handler in a pool process is the default, or billiard's exit handler when the
pool has `sigprotection` (its blocking pool, not the event loop's AsynPool that our workers
run): either is put back after the call, with the timer disarmed first. A timer already armed
(pytest-timeout's, in the tests) is kept: if it is due first it is left alone and no limit is
armed; otherwise it is armed again, with what it had left, once the call ends, and its handler
restored.

Only in the main thread, where Python runs signal handlers: in Celery's prefork and solo pools
the task runs there. In the threads pool no per-call limit is armed (nor does that pool enforce
the message's). gevent and eventlet pools are not supported (untested; none of ours runs them).
"""

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from celery.exceptions import SoftTimeLimitExceeded


def _raise_soft_time_limit(signum: int, frame: FrameType | None) -> None:
    raise SoftTimeLimitExceeded()


def can_arm() -> bool:
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def soft_time_limit(seconds: float | None) -> Iterator[bool]:
    """Raise SoftTimeLimitExceeded in the block once it has run `seconds` (no limit if None or 0).
    Yields whether the limit was armed. The timer is disarmed and the previous SIGALRM handler
    and timer restored when the block ends, however it ends.

    The exception can surface as the block ends (the signal fell just before the disarm): the
    caller treats it as the block's, as it would Celery's own soft limit."""
    if not seconds or seconds <= 0 or not can_arm():
        yield False
        return
    started = time.monotonic()  # before the read: what it had left is not overstated
    previous_delay, previous_interval = signal.getitimer(signal.ITIMER_REAL)
    if (previous_delay and previous_delay <= seconds) or signal.getsignal(signal.SIGALRM) is None:
        # Another timer is due first: leave it (and its handler) be. Or the handler was not set
        # from Python, so it could not be put back.
        yield False
        return
    previous_handler = signal.signal(signal.SIGALRM, _raise_soft_time_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield True
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    finally:
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_delay:
            # What the other timer had left (a moment, if it fell due meanwhile: it still fires).
            left = previous_delay - (time.monotonic() - started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001), previous_interval)
