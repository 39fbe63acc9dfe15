"""What each long-running process does once its code is loaded."""

import gc
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any


def freeze_loaded_objects() -> None:
    """Move every object that exists now (modules, classes, settings: ~140k in a web worker) into
    the collector's permanent generation.

    They live as long as the process, but a full collection walked them all every time: ~60 ms
    once every few hundred requests in a gunicorn worker, with the request that triggered it
    waiting. Objects made later are collected as before. Call it once the application is loaded.
    """
    gc.collect()
    gc.freeze()


# If the process is still here this long after SIGTERM or SIGINT, the exit is raised again.
EXIT_AGAIN_AFTER_SECONDS = 2.0


def exit_even_if_a_finalizer_swallows_it() -> None:
    """Make the current SIGTERM and SIGINT handlers (celery beat's: save the schedule, raise
    SystemExit) raise SystemExit again every EXIT_AGAIN_AFTER_SECONDS while the process lives.

    Python drops an exception a signal handler raises while a finalizer (`__del__`) runs: it prints
    "Exception ignored in ..." and goes on. beat then ran until SIGKILL, 20 s later in a test
    (the SIGTERM fell while a psycopg connection was being collected). Main thread only.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)
        if callable(previous):
            signal.signal(signum, _exiting_again(previous))


def _exiting_again(previous: Callable[[int, FrameType | None], Any]) -> Any:
    def handler(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGALRM, _exit)
        signal.setitimer(signal.ITIMER_REAL, EXIT_AGAIN_AFTER_SECONDS, EXIT_AGAIN_AFTER_SECONDS)
        previous(signum, frame)

    return handler


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit()
