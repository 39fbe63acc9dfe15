"""Concurrent writers on the same rollup rows: exact counts, and no deadlock.

Every connection seeds PostgreSQL's random() alike, so that their statements draw the same shards
and really meet on the same rollup rows (by chance they would only 1 time in 16).
"""

import threading
from typing import Any

import pytest
from django.db import connection

from apps.accounts.models import User
from apps.monitoring import selectors
from apps.tasks import execution, services
from apps.tasks.models import Task

pytestmark = pytest.mark.django_db(transaction=True)
PER_THREAD = 25


def run_in_threads(*targets: Any) -> list[BaseException]:
    errors: list[BaseException] = []

    def wrapped(target: Any) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT setseed(0.42)")
            target()
        except BaseException as exc:  # reported to the test below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=wrapped, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def test_creates_and_claims_at_once_keep_exact_counts_without_deadlock(user: User, broker: Any):
    ready = [services.task_create(owner=user, type="echo", payload={})[0] for _ in range(50)]

    def create() -> None:
        for n in range(PER_THREAD):
            services.task_create(owner=user, type="echo", payload={"n": n})

    def claim(tasks: list[Task]) -> None:
        for task in tasks:
            execution.handle_delivery(
                task_id=str(task.id),
                dispatch_id=str(task.dispatch_id),
                redelivered=False,
                worker="w",
            )

    errors = run_in_threads(create, create, lambda: claim(ready[:25]), lambda: claim(ready[25:]))
    assert errors == []
    assert selectors.task_counts(owner_id=None) == {
        "echo": {"queued": 2 * PER_THREAD, "succeeded": 50}
    }
    assert selectors.task_counts(owner_id=user.id) == selectors.task_counts(owner_id=None)
