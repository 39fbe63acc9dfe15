"""Plans that outlive a table's growth. PostgreSQL keeps a prepared statement's generic plan
until the table's statistics change, which autovacuum does at most once a minute; a plan made
while the statistics said a table was nearly empty (a fresh install) scans the whole table as it
grows (docs/benchmarks.md, W13: a batch claim read the whole task table on every batch, 240 ms at
15,000 rows). Each connection replans once its plans are DATABASE_PLAN_MAX_AGE_SECONDS old."""

from typing import Any

import psycopg
import pytest
from django.db import InterfaceError, OperationalError, connection

from apps.accounts.models import User
from apps.handlers.registry import get_task_type
from apps.tasks import services
from apps.tasks.execution import handle_batch, handle_delivery
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import prepared_cursor
from tests.support.processes import database_url
from tests.tasks.factories import create_task

FILLER_ROWS = 20_000
GROWN_TABLES = ["tasks_task", "tasks_taskattempt"]


def rows_read_by_scans() -> dict[str, int]:
    """Rows this transaction has read by sequential scans of the tables grow_tables() grows."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, seq_tup_read FROM pg_stat_xact_user_tables WHERE relname = ANY(%s)",
            [GROWN_TABLES],
        )
        return dict(cursor.fetchall())


def grow_tables(owner: User) -> None:
    """FILLER_ROWS finished tasks with an attempt each: far more than any plan made on the small
    tables assumed, and not analysed since. (The rollup rows grow with the number of owners, over
    days, not with the tasks.)"""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            WITH filler AS (
                INSERT INTO tasks_task (id, owner_id, type, payload, queue, status, max_retries,
                    retries, attempts, progress, progress_message, result, error,
                    dead_letter_reason, idempotency_fingerprint, created_at, updated_at)
                SELECT gen_random_uuid(), %s, 'echo', '{}', 'default', 'succeeded', 3, 0, 1, 100,
                    '', '{}', '', '', '', now(), now()
                FROM generate_series(1, %s)
                RETURNING id
            )
            INSERT INTO tasks_taskattempt (task_id, number, outcome, worker, started_at, error)
            SELECT id, 1, 'succeeded', 'filler', now(), '' FROM filler
            """,
            [owner.id, FILLER_ROWS],
        )


def run_as_batch(pairs: list[tuple[str, str]]) -> None:
    """The (task id, dispatch id) pairs claimed and finished as one batch."""
    outcomes = handle_batch(task_type="echo", pairs=pairs, redelivered=False, worker="w")
    assert [o.status for _, _, o in outcomes] == [TaskStatus.SUCCEEDED] * len(pairs)


def run_once(owner: User) -> None:
    """A single create, its claim and finish; four single creates run as a batch; four bulk
    creates (COPY) run as a batch."""
    single = create_task(owner, "echo", {"n": 1})
    outcome = handle_delivery(
        task_id=str(single.id),
        dispatch_id=str(single.dispatch_id),
        redelivered=False,
        worker="w",
        task_type="echo",
    )
    assert outcome.status == TaskStatus.SUCCEEDED
    singles = [create_task(owner, "echo", {"n": n}) for n in range(4)]
    run_as_batch([(str(t.id), str(t.dispatch_id)) for t in singles])
    items = [{"type": "echo", "payload": {"n": n}} for n in range(4)]
    bulk, _ = services.task_create_bulk(owner=owner, items=items)
    run_as_batch([(str(new.id), str(new.dispatch_id)) for new in bulk])


def test_the_create_and_the_workers_statements_use_indexes_after_the_tables_grow(
    user: User, broker: Any, settings: Any
) -> None:
    settings.DATABASE_PREPARED_STATEMENTS = True
    settings.DATABASE_PLAN_MAX_AGE_SECONDS = 3600
    get_task_type("echo")
    run_once(user)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum does on a fresh install's near-empty tables
    for _ in range(8):  # more than five runs: PostgreSQL's point for a generic plan
        run_once(user)
    grow_tables(user)
    assert Task.objects.count() > FILLER_ROWS
    settings.DATABASE_PLAN_MAX_AGE_SECONDS = 0  # the plans are older than that now
    before = rows_read_by_scans()
    run_once(user)
    after = rows_read_by_scans()
    assert {table: after[table] - before[table] for table in GROWN_TABLES} == dict.fromkeys(
        GROWN_TABLES, 0
    )


@pytest.mark.django_db(transaction=True)
def test_a_replan_on_a_cut_connection_raises_djangos_error(settings: Any) -> None:
    """The worker requeues on Django's OperationalError and the API answers it with a 503: the
    replan, which runs on the raw connection, must not raise psycopg's own instead."""
    settings.DATABASE_PREPARED_STATEMENTS = True
    settings.DATABASE_PLAN_MAX_AGE_SECONDS = 0
    connection.ensure_connection()
    with psycopg.connect(database_url(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [connection.connection.info.backend_pid])
    with pytest.raises((OperationalError, InterfaceError)):
        prepared_cursor()
    connection.close()
