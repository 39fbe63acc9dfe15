"""Cluster-wide limits per task type, checked by the worker about to claim a task
(apps.tasks.execution.handle_delivery). Celery's own rate limits count per worker; these count
across every worker of the cluster.

Rate limit (N per second or minute): a Redis key per type holds the earliest time the next task
may start (GCRA, the "theoretical arrival time" form of a token bucket), updated by a Lua script,
atomically for all workers, on Redis's clock. Starts are spaced evenly, period / N apart: at most
N + 1 start in any window of one period. If Redis does not answer, the limit fails open (tasks
start; a warning is logged, and the admin says the limits are not enforced), or, with
RATE_LIMITS_WITHOUT_REDIS=closed, fails closed (the tasks of rate-limited types are held until
Redis answers again).

Concurrency limit (at most N running): PostgreSQL decides, in the claim itself. A claim of a
limited type first takes a transaction-scoped advisory lock on the type, then claims only if
fewer than N tasks of the type take a slot (`running`, or released from the line and not yet
claimed; partial indexes count both) and no older task of the type waits for a slot (first
come, first served). The running
rows are the truth, so a crashed worker never leaks a slot: its task stops counting when its lost
attempt is settled (redelivery or the lease reaper).

A task held back by a limit is not failed and uses no retry: it goes back to wait (`postponed`,
with a history note "held: ..."). Held by the rate limit, the releaser queues it again at its
turn; held by the concurrency limit, it waits in its type's line until a slot frees
(apps.tasks.slots).
"""

import logging
import random
import threading
import time
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.db import connection

from apps.handlers.registry import TaskTypeSpec

logger = logging.getLogger(__name__)

# The first key of the two-key advisory lock: keeps our locks apart from anyone else's.
ADVISORY_LOCK_NAMESPACE = 0x7466  # "tf"
# After Redis failed to answer, rate limits are not checked (fail open) for this long.
FAIL_OPEN_SECONDS = 5.0

# KEYS[1]: the type's key. ARGV[1]: the spacing between starts, in microseconds.
# Returns 0 if a task may start now (and books its slot), else the microseconds to wait.
_GCRA = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then
  return math.ceil(tat - now)
end
local next_tat = now + interval
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.ceil(interval / 1000) + 1000)
return 0
"""


class _FailOpen:
    """Process-wide: after Redis failed, let tasks through without asking it for a while."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def is_open(self) -> bool:
        return time.monotonic() < self._until

    def seconds_left(self) -> float:
        return max(0.0, self._until - time.monotonic())

    def trip(self, exc: BaseException) -> None:
        with self._lock:
            if not self.is_open():
                what = (
                    "tasks of rate-limited types are HELD"
                    if fails_closed()
                    else "Task type rate limits are NOT enforced"
                )
                logger.warning(
                    "%s for %.0f s: Redis did not answer (%s: %s)",
                    what,
                    FAIL_OPEN_SECONDS,
                    type(exc).__name__,
                    exc,
                )
            self._until = time.monotonic() + FAIL_OPEN_SECONDS

    def reset(self) -> None:
        self._until = 0.0


fail_open = _FailOpen()
_scripts: dict[int, Any] = {}


def _redis() -> Any:
    from django_redis import get_redis_connection

    return get_redis_connection("default")


def rate_key(type_name: str) -> str:
    # Through the cache's key function, so that its KEY_PREFIX keeps deployments (and test runs)
    # that share one Redis apart.
    return str(caches["default"].make_key(f"taskflow:rate:{type_name}"))


def fails_closed() -> bool:
    """Whether rate-limited tasks wait (rather than start unlimited) while Redis is away."""
    return bool(settings.TASKFLOW["RATE_LIMITS_WITHOUT_REDIS"] == "closed")


def _without_redis() -> float | None:
    # Closed: until Redis is asked again (the spread of rate_hold_seconds comes on top).
    return max(fail_open.seconds_left(), 1.0) if fails_closed() else None


def rate_limit_wait(spec: TaskTypeSpec) -> float | None:
    """None if a task of `spec` may start now (its start is booked), else the seconds until
    one may. Without a rate limit, None. With Redis away, None (fail open) or the time until
    Redis is asked again (RATE_LIMITS_WITHOUT_REDIS=closed)."""
    rate = spec.rate_limit
    if rate is None:
        return None
    if fail_open.is_open():
        return _without_redis()
    interval_us = max(1, round(rate.interval_seconds * 1_000_000))
    try:
        client = _redis()
        script = _scripts.get(id(client))
        if script is None:
            script = _scripts.setdefault(id(client), client.register_script(_GCRA))
        wait_us = int(script(keys=[rate_key(spec.name)], args=[interval_us]))
    except Exception as exc:  # any Redis or connection error
        fail_open.trip(exc)
        return _without_redis()
    return wait_us / 1_000_000 if wait_us > 0 else None


def rate_hold_seconds(spec: TaskTypeSpec, wait: float) -> float:
    """How long a task refused by the rate limit waits: until a start is free, plus a spread
    (so that the tasks held together do not all come back at the same moment)."""
    assert spec.rate_limit is not None
    spread = min(float(spec.rate_limit.period_seconds), 4 * spec.rate_limit.interval_seconds)
    return wait + random.uniform(0, spread)


def rate_limits_enforced() -> bool:
    """Whether Redis answers now (the admin says so when rate limits are set)."""
    try:
        return bool(_redis().ping())
    except Exception:
        return False


# --- Concurrency, in the claim statement ------------------------------------------------------


def lock_type_for_claim(type_name: str) -> None:
    """Serialise the claims of one type until the transaction ends. Then the claim's count of
    running tasks is taken after the previous claim committed (a statement's snapshot is taken
    when it starts, so the lock must come in a statement of its own, before the claim)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
            [ADVISORY_LOCK_NAMESPACE, type_name],
        )


def concurrency_condition(spec: TaskTypeSpec) -> tuple[str, tuple[object, ...]]:
    """The claim's extra WHERE: fewer than the limit of the type's tasks take a slot, and no
    older task of the type waits in its line for a slot (apps.tasks.slots), so that a task
    published while a slot is free does not take it ahead of those waiting: it joins the line
    behind them (first come, first served; the hold then releases the oldest).

    A slot is taken by a running task and by another released task not yet claimed (queued,
    still marked): the slot its release counted for it, which a newcomer whose message came
    first would otherwise take, sending the released task back to the line."""
    from apps.tasks.models import Task

    if spec.concurrency_limit is None:
        return "", ()
    table = Task._meta.db_table
    sql = (
        f"AND (SELECT count(*) FROM {table} r "  # noqa: S608 (a table name, not input)
        "WHERE r.type = t.type AND r.status = 'running') "
        f"+ (SELECT count(*) FROM {table} q "
        "WHERE q.type = t.type AND q.status = 'queued' "
        "AND q.waiting_for_slot_since IS NOT NULL AND q.id <> t.id) < %s "
        f"AND NOT EXISTS (SELECT 1 FROM {table} w "
        "WHERE w.type = t.type AND w.status = 'postponed' "
        "AND w.waiting_for_slot_since IS NOT NULL AND w.run_at IS NULL "
        "AND (w.created_at, w.id) < (t.created_at, t.id))"
    )
    return sql, (spec.concurrency_limit,)


def concurrency_admits(task_id: str, spec: TaskTypeSpec) -> bool:
    """Whether the claim's concurrency condition holds for the task now. Without the type's
    lock: what a claim made now would most likely find, not a promise."""
    from apps.tasks.models import Task

    condition, params = concurrency_condition(spec)
    if not condition:
        return True
    table = Task._meta.db_table
    sql = f"SELECT EXISTS (SELECT 1 FROM {table} t WHERE t.id = %s {condition})"  # noqa: S608 (a table name)
    values: list[Any] = [task_id, *params]
    with connection.cursor() as cursor:
        cursor.execute(sql, values)
        row = cursor.fetchone()
    return bool(row and row[0])
