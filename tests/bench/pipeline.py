"""Throughput and latency of the task pipeline: the platform's, and bare Celery's beside it.

Every function here runs in the bench process, with Django set up on the bench database; the
workers are separate processes (the Procfile's, or tests/bench/bare_celery.py's).
"""

import itertools
import threading
import time
from datetime import datetime, timedelta
from typing import Any

import psycopg
from django.db import connection
from django.db.models import Count, Max, Min, Q
from django.utils import timezone

from apps.accounts.models import User
from apps.tasks import services
from apps.tasks.models import Task
from apps.tasks.states import FINAL_STATES, TaskStatus
from tests.bench import bare_celery
from tests.bench.environment import Broker, wait_until
from tests.bench.report import percentile

FINAL = [str(s) for s in FINAL_STATES]
BATCH = 1000


def _ms(values: list[float]) -> dict[str, float | None]:
    return {
        "p50_ms": percentile(values, 50),
        "p99_ms": percentile(values, 99),
        "max_ms": max(values) if values else None,
        "samples": len(values),
    }


# --- bare Celery --------------------------------------------------------------------------------


def publish_noops(*, n: int, budget: float) -> dict[str, Any]:
    """Publish up to n no-op messages one by one (each waits for its publisher confirm), for at
    most `budget` seconds."""
    started = time.time()
    sent = 0
    while sent < n and time.time() - started < budget:
        bare_celery.noop.apply_async(args=(sent,), queue=bare_celery.NOOP_QUEUE)
        sent += 1
    seconds = time.time() - started
    return {
        "published": sent,
        "started": started,
        "seconds": seconds,
        "published_per_s": sent / seconds,
    }


def drain_queue(*, broker: Broker, queue: str, n: int, interval: float = 0.005) -> dict[str, Any]:
    """Time a worker that is starting up to empty `queue` of n messages: from the first poll that
    sees its consumer to the first that sees no ready message (up to `concurrency` messages may
    then still be unacknowledged: see error_bound_s in the callers)."""
    wait_until(
        lambda: broker.exists(queue) and broker.depth(queue)[1] > 0,
        timeout=90,
        what=f"a consumer on {queue}",
        interval=interval,
    )
    started = time.time()
    wait_until(
        lambda: broker.depth(queue)[0] == 0,
        timeout=max(300.0, n / 5),
        what=f"{queue} to drain",
        interval=interval,
    )
    seconds = time.time() - started
    return {"tasks": n, "seconds": seconds, "tasks_per_s": n / seconds if seconds else None}


def bare_noop(*, broker: Broker, n: int, budget: float, concurrency: int) -> dict[str, Any]:
    """With the bare worker running: publish up to n no-ops (at most `budget` s of publishing);
    the end is the first poll that finds the queue with no ready message.

    Error bound: up to `concurrency` messages (prefetch 1 per pool process) may then still be
    unacknowledged, plus one poll interval: reported as error_bound_s.
    """
    interval = 0.005
    published = publish_noops(n=n, budget=budget)
    wait_until(
        lambda: broker.depth(bare_celery.NOOP_QUEUE)[0] == 0,
        timeout=max(120.0, n / 5),
        what="the bench.noop queue to drain",
        interval=interval,
    )
    sent = published["published"]
    seconds = time.time() - published["started"]
    return {
        "tasks": sent,
        "seconds": seconds,
        "publish_seconds": published["seconds"],
        "tasks_per_s": sent / seconds,
        "error_bound_s": concurrency * seconds / sent + interval,
    }


def bookkeeping_create(conn: psycopg.Connection[Any], *, n: int, budget: float) -> dict[str, Any]:
    """Insert up to n bench_task rows (COPY, BATCH at a time) and publish a message for each, for
    at most `budget` seconds."""
    conn.execute(bare_celery.SCHEMA)
    conn.execute("TRUNCATE bench_attempt, bench_task")
    started = time.time()
    created = 0
    copy_sql = "COPY bench_task (id, status, payload) FROM STDIN"
    while created < n and time.time() - started < budget:
        ids = range(created + 1, min(n, created + BATCH) + 1)
        with conn.transaction(), conn.cursor() as cursor, cursor.copy(copy_sql) as copy:
            for task_id in ids:
                copy.write_row((task_id, "queued", f'{{"i": {task_id}}}'))
        for task_id in ids:
            if time.time() - started > budget:
                break
            bare_celery.bookkeeping.apply_async(
                args=(task_id,), queue=bare_celery.BOOKKEEPING_QUEUE
            )
            created = task_id
    # Rows whose message was never sent (budget hit mid-batch) are not part of the run.
    conn.execute("DELETE FROM bench_task WHERE id > %s", (created,))
    return {"tasks": created, "started": started, "publish_seconds": time.time() - started}


def bookkeeping_wait(conn: psycopg.Connection[Any], *, n: int) -> tuple[float, float]:
    """Wait until n rows succeeded: (first started_at, last finished_at) as epoch seconds."""

    def done() -> bool:
        row = conn.execute("SELECT count(*) FROM bench_task WHERE status = 'succeeded'").fetchone()
        return bool(row and row[0] >= n)

    wait_until(done, timeout=max(300.0, n / 5), what="bench_task rows to succeed", interval=0.1)
    row = conn.execute(
        "SELECT extract(epoch FROM min(started_at)), extract(epoch FROM max(finished_at)) "
        "FROM bench_task"
    ).fetchone()
    assert row is not None
    return float(row[0]), float(row[1])


# --- the platform -------------------------------------------------------------------------------


def create_bulk(
    user: User, n: int, *, run_at: list[datetime] | None = None, batch: int = BATCH
) -> list[services.NewTask]:
    """n echo tasks through services.task_create_bulk, `batch` per call (each publishes after its
    commit)."""
    created: list[services.NewTask] = []
    for first in range(0, n, batch):
        created += _bulk(user, range(first, min(n, first + batch)), run_at)
    return created


def _bulk(user: User, numbers: range, run_at: list[datetime] | None) -> list[services.NewTask]:
    items: list[dict[str, Any]] = []
    for number in numbers:
        item: dict[str, Any] = {"type": "echo", "payload": {"i": number}}
        if run_at is not None:
            item["run_at"] = run_at[number]
        items.append(item)
    tasks, _ = services.task_create_bulk(owner=user, items=items)
    return tasks


def settled(user: User) -> dict[str, Any]:
    """How many of the user's tasks are in a final state, and when the last one finished."""
    row = Task.objects.filter(owner=user).aggregate(
        total=Count("id"),
        final=Count("id", filter=Q(status__in=FINAL)),
        succeeded=Count("id", filter=Q(status=TaskStatus.SUCCEEDED)),
        first=Min("started_at"),
        last=Max("finished_at"),
    )
    return row


def wait_settled(user: User, n: int, *, timeout: float, interval: float = 0.2) -> dict[str, Any]:
    return wait_until(
        lambda: (row := settled(user))["final"] >= n and row,
        timeout=timeout,
        what=f"{n} tasks of {user.email} to finish",
        interval=interval,
    )


def platform_pipeline(
    *, user: User, n: int, budget: float, ahead: int, batch: int = 200
) -> dict[str, Any]:
    """Up to n echo tasks created through the bulk service (at most `budget` s of creating, and
    never more than `ahead` unfinished) while the platform's worker runs; from the first create to
    the last finished_at in PostgreSQL."""
    started = time.time()
    created = 0
    while created < n and time.time() - started < budget:
        if created - settled(user)["final"] > ahead:
            time.sleep(0.05)
            continue
        count = min(batch, n - created)
        _bulk(user, range(created, created + count), None)
        created += count
    create_seconds = time.time() - started
    row = wait_settled(user, created, timeout=max(300.0, created / 5))
    seconds = row["last"].timestamp() - started
    return {
        "tasks": created,
        "seconds": seconds,
        "create_seconds": create_seconds,
        "tasks_per_s": created / seconds,
        "succeeded": row["succeeded"],
    }


def drain_backlog(*, users: list[User], broker: Broker, budget: float) -> dict[str, Any]:
    """Tasks created while no worker ran (the API phase): how fast the starting worker empties the
    queue, from the first poll that sees its consumer, for at most `budget` s. What is left is
    for the caller to remove (see remove_unfinished)."""
    wait_until(
        lambda: broker.depth("default")[1] > 0,
        timeout=90,
        what="a consumer on default",
        interval=0.01,
    )
    started = time.time()
    backlog = Task.objects.filter(owner__in=users)
    total = backlog.count()

    def progress() -> dict[str, Any]:
        return backlog.aggregate(
            final=Count("id", filter=Q(status__in=FINAL)), last=Max("finished_at")
        )

    row = progress()
    while row["final"] < total and time.time() - started < budget:
        time.sleep(0.25)
        row = progress()
    done = row["final"]
    seconds = row["last"].timestamp() - started if row["last"] else 0.0
    return {
        "backlog": total,
        "tasks": done,
        "seconds": seconds,
        "tasks_per_s": done / seconds if seconds > 0 else None,
    }


def remove_unfinished(*, users: list[User], broker: Broker) -> int:
    """With no worker running: purge the default queue and delete the users' unfinished tasks
    (else beat's republisher would publish them again)."""
    broker.purge("default")
    deleted, _ = Task.objects.filter(owner__in=users).exclude(status__in=FINAL).delete()
    return deleted


def latency(
    *,
    user: User,
    rate: float,
    seconds: float,
    threads: int = 4,
    warmup: float = 1.0,
    per_call: int = 1,
) -> dict[str, Any]:
    """Open loop: call i creates `per_call` tasks at start + i * per_call / rate (one task:
    services.task_create; more: services.task_create_bulk, as the pipeline creates), from
    `threads` threads; create -> started is started_at - created_at of each task.

    The first `warmup` seconds run at the same rate and are not counted: in them the bench's
    threads open their database connections and take their broker connections (the creates of a
    cold thread took 40-50 ms, and the tasks queued behind them were the whole 1% tail). Their
    own figures are in the result's `warmup`."""
    warm = int(rate * warmup / per_call)  # calls
    total = max(1, int(rate * seconds / per_call))
    counter = itertools.count()
    lock = threading.Lock()
    start = time.monotonic() + 0.2
    measured_from = start + warm * per_call / rate
    behind: list[float] = []
    warm_ids: list[Any] = []
    measured_ids: list[Any] = []

    def run() -> None:
        try:
            while True:
                with lock:
                    number = next(counter)
                if number >= warm + total:
                    return
                due = start + number * per_call / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                elif number >= warm:
                    behind.append(-pause)
                ids = measured_ids if number >= warm else warm_ids
                if per_call == 1:
                    task, _ = services.task_create(owner=user, type="echo", payload={"i": number})
                    ids.append(task.id)
                else:
                    items = [
                        {"type": "echo", "payload": {"i": number, "j": j}} for j in range(per_call)
                    ]
                    tasks, _ = services.task_create_bulk(owner=user, items=items)
                    ids.extend(new.id for new in tasks)
        finally:
            connection.close()

    pool = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    created = time.monotonic() - measured_from
    wait_settled(user, (warm + total) * per_call, timeout=120 + seconds)

    def create_to_start(ids: list[Any]) -> list[tuple[float, datetime]]:
        rows = Task.objects.filter(id__in=ids).values_list("created_at", "started_at")
        return [((s - c).total_seconds() * 1000, c) for c, s in rows if s is not None]

    measured = create_to_start(measured_ids)
    first = min((c for _, c in measured), default=None)
    slowest = sorted(measured, key=lambda row: row[0], reverse=True)[: max(1, len(measured) // 100)]
    return {
        "target_rate": rate,
        "achieved_rate": total * per_call / created if created > 0 else None,
        "tasks": total * per_call,
        "tasks_per_call": per_call,
        "creates_behind_schedule": len(behind),
        **_ms([ms for ms, _ in measured]),
        # When the slowest 1% were created (seconds into the measured part): a tail spread over
        # the run, or one stall.
        "slowest_created_at_s": sorted(
            round((c - first).total_seconds(), 2) for _, c in slowest if first is not None
        ),
        "warmup": {
            "seconds": warmup,
            "tasks": warm * per_call,
            **_ms([ms for ms, _ in create_to_start(warm_ids)]),
        },
    }


def postponed(*, user: User, n: int, spread: float, lead: float = 5.0) -> dict[str, Any]:
    """n tasks whose run_at is spread evenly over `spread` seconds, starting `lead` s from now;
    lateness = started_at - run_at (run_at as asked: the row's run_at is cleared on release)."""
    base = timezone.now() + timedelta(seconds=lead)
    run_at = [base + timedelta(seconds=spread * i / n) for i in range(n)]
    tasks = create_bulk(user, n, run_at=run_at)
    asked = {task.id: task.run_at for task in tasks}
    wait_settled(user, n, timeout=lead + spread + 120)
    values = []
    for task_id, started in Task.objects.filter(owner=user).values_list("id", "started_at"):
        wanted = asked.get(task_id)
        if started is not None and wanted is not None:
            values.append((started - wanted).total_seconds() * 1000)
    return {"tasks": n, "spread_s": spread, **_ms(values), "early": sum(v < 0 for v in values)}


def succeeded_total() -> int:
    return Task.objects.filter(status=TaskStatus.SUCCEEDED).count()


def run_until_total(
    *, user: User, total: int, deadline: float, ahead: int = 2000, batch: int = 500
) -> dict[str, Any]:
    """Create echo tasks (never more than `ahead` waiting) until `total` tasks have succeeded in
    the whole database, or until `deadline` (time.time()); then wait for those created."""
    started = time.time()
    created = 0
    done = succeeded_total()
    base = done
    while done < total and time.time() < deadline:
        if created - (done - base) < ahead:
            count = min(batch, ahead, total - done)
            _bulk(user, range(created, created + count), None)
            created += count
        else:
            time.sleep(0.5)
        done = succeeded_total()
    wait_until(
        lambda: succeeded_total() >= base + created,
        timeout=600,
        what="the memory section's tasks",
        interval=0.5,
    )
    return {"created": created, "seconds": time.time() - started, "reached": total <= done}


def probe_postgres(database_url: str, *, samples: int = 200) -> dict[str, Any]:
    """What one round trip and one committed write cost on this machine now: p50/p99 ms of
    `SELECT 1` and of a one-row INSERT in autocommit (a commit waits for the WAL flush)."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_probe (id bigserial PRIMARY KEY, v int)")
        timings: dict[str, list[float]] = {"select": [], "commit": []}
        for _ in range(samples):
            began = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            timings["select"].append((time.perf_counter() - began) * 1000)
            began = time.perf_counter()
            conn.execute("INSERT INTO bench_probe (v) VALUES (1)")
            timings["commit"].append((time.perf_counter() - began) * 1000)
        conn.execute("DROP TABLE bench_probe")
    return {
        f"{name}_{p}_ms": percentile(values, int(p[1:]))
        for name, values in timings.items()
        for p in ("p50", "p99")
    }
