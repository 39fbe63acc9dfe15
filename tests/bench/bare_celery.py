"""The bare Celery baselines: a minimal Celery app on the bench vhost, configured like the platform.

Same as the platform worker: acks_late, prefetch multiplier 1, prefork pool with the same
concurrency, JSON, no result backend, publisher confirms, durable queues, persistent messages.
Different: its own queues (bench.noop, bench.bookkeeping), no Django, no state machine.

- `bench.noop` does nothing: the ceiling of Celery + RabbitMQ on this machine.
- `bench.bookkeeping` does by hand, with raw psycopg, the least a task platform must write:
  mark the row running and insert its attempt (one transaction, committed before the work, as a
  claim must be), then mark it succeeded (a second transaction).

Worker: celery -A tests.bench.bare_celery worker --queues bench.noop,bench.bookkeeping ...
"""

import os
from typing import Any

import psycopg
from celery import Celery
from celery.signals import worker_process_shutdown
from kombu import Queue

BROKER_URL = os.environ.get("BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/taskflow_bench"
)
NOOP_QUEUE = "bench.noop"
BOOKKEEPING_QUEUE = "bench.bookkeeping"
QUEUES = (NOOP_QUEUE, BOOKKEEPING_QUEUE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_task (
    id bigint PRIMARY KEY,
    status text NOT NULL,
    payload jsonb NOT NULL DEFAULT '{}',
    attempts integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at timestamptz,
    finished_at timestamptz
);
CREATE TABLE IF NOT EXISTS bench_attempt (
    id bigserial PRIMARY KEY,
    task_id bigint NOT NULL REFERENCES bench_task (id),
    number integer NOT NULL,
    worker text NOT NULL,
    started_at timestamptz NOT NULL,
    UNIQUE (task_id, number)
);
"""

app = Celery("bench_bare", broker=BROKER_URL, set_as_current=False)
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    result_backend=None,
    task_ignore_result=True,
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    task_queues=[Queue(name, durable=True) for name in QUEUES],
    task_default_queue=NOOP_QUEUE,
    task_routes={"bench.bookkeeping": {"queue": BOOKKEEPING_QUEUE}},
    task_create_missing_queues=False,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
    task_send_sent_event=False,
)

_connection: psycopg.Connection[Any] | None = None


def connection() -> psycopg.Connection[Any]:
    """One connection per worker process, opened on first use (after the fork)."""
    global _connection
    if _connection is None or _connection.closed:
        _connection = psycopg.connect(DATABASE_URL, autocommit=True)
    return _connection


@worker_process_shutdown.connect
def _close(**kwargs: Any) -> None:
    if _connection is not None:
        _connection.close()


@app.task(name="bench.noop", acks_late=True, ignore_result=True)
def noop(number: int) -> None:
    return None


@app.task(name="bench.bookkeeping", bind=True, acks_late=True, ignore_result=True)
def bookkeeping(self: Any, task_id: int) -> None:
    conn = connection()
    with conn.transaction():
        row = conn.execute(
            "UPDATE bench_task SET status = 'running', attempts = attempts + 1, "
            "started_at = clock_timestamp(), updated_at = clock_timestamp() "
            "WHERE id = %s AND status = 'queued' RETURNING attempts",
            (task_id,),
        ).fetchone()
        if row is None:
            return  # a duplicate message: somebody else has it
        conn.execute(
            "INSERT INTO bench_attempt (task_id, number, worker, started_at) "
            "VALUES (%s, %s, %s, clock_timestamp())",
            (task_id, row[0], self.request.hostname or ""),
        )
    # (The handler would run here.)
    with conn.transaction():
        conn.execute(
            "UPDATE bench_task SET status = 'succeeded', finished_at = clock_timestamp(), "
            "updated_at = clock_timestamp() WHERE id = %s AND status = 'running'",
            (task_id,),
        )
