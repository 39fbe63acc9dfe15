"""Run one function in several threads at once, each on its own database connection."""

import threading
from collections.abc import Callable
from typing import TypeVar

from django.db import connections

T = TypeVar("T")


def at_once(function: Callable[[], T], copies: int) -> list[T]:
    """Call `function` from `copies` threads released together by a barrier; their results, in
    the order they finished. Each thread closes its database connections; the first exception a
    thread raised is raised here, and so is a thread still running after a minute."""
    barrier = threading.Barrier(copies)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            results.append(function())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run) for _ in range(copies)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError("a thread was still running after 60 s")
    if errors:
        raise errors[0]
    return results
