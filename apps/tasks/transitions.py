"""The one function through which every task status changes.

It is a single SQL statement: lock the row(s), update them only if their status is one the move
is allowed from (so two workers or two beat processes cannot both win), write the history row,
and start or finish the attempt row, all atomically.
"""

import functools
import time
import uuid
import weakref
from dataclasses import dataclass
from typing import Any, Literal, overload

from django.conf import settings
from django.db import connection
from django.db.backends.postgresql.base import ServerBindingCursor

from apps.tasks.models import Task, TaskAttempt, TaskStatusChange
from apps.tasks.states import FINAL_STATES, TaskStatus, sources_of

TASK_TABLE = Task._meta.db_table
ATTEMPT_TABLE = TaskAttempt._meta.db_table
HISTORY_TABLE = TaskStatusChange._meta.db_table
# The completion callbacks' outbox (apps.callbacks.models.TaskCallback), named rather than
# imported: apps.callbacks depends on this app, not the reverse.
CALLBACK_TABLE = "callbacks_taskcallback"
_TASK_FIELDS = {str(field.column): field for field in Task._meta.concrete_fields}
# Named, not `t.*`: a column added by a later migration must not change a prepared statement's
# result type while old workers still run it.
_RETURNED_COLUMNS = ", ".join(f"t.{column}" for column in _TASK_FIELDS)


_ServerBindingCursor: Any = ServerBindingCursor  # untyped in the stubs


class _PreparedCursor(_ServerBindingCursor):
    """Server-side binding, and a prepared statement from the first execution: a transition is
    a long statement that the worker runs twice a task, and PostgreSQL spent more time parsing and
    planning it than executing it (docs/benchmarks.md)."""

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        return super().execute(query, params, prepare=True)


# When each PostgreSQL connection last dropped its cached plans (time.monotonic()).
_plans_made_at: "weakref.WeakKeyDictionary[Any, float]" = weakref.WeakKeyDictionary()


def prepared_cursor() -> Any:
    """A cursor whose statements run prepared (server-side binding), when
    DATABASE_PREPARED_STATEMENTS is on; a plain one otherwise.

    The connection's cached plans are dropped (`DISCARD PLANS`) when older than
    DATABASE_PLAN_MAX_AGE_SECONDS: a prepared statement keeps its generic plan until the table's
    statistics change, which autovacuum does at most once a minute and after 10% growth, and a
    plan made while a table was small scans the whole table (W13). Replanned, it is costed with
    the table's size as it is then. The prepared statements stay prepared."""
    if not settings.DATABASE_PREPARED_STATEMENTS:
        return connection.cursor()
    connection.ensure_connection()
    raw = connection.connection
    now = time.monotonic()
    made_at = _plans_made_at.setdefault(raw, now)
    if now - made_at >= settings.DATABASE_PLAN_MAX_AGE_SECONDS:
        with connection.wrap_database_errors:  # Django's exceptions, as for any other query
            raw.execute("DISCARD PLANS")
        _plans_made_at[raw] = now
    # Django's own wrapper around it: query logging, error translation, transaction checks.
    return connection._prepare_cursor(_PreparedCursor(raw))  # type: ignore[attr-defined]


class IllegalTransition(ValueError):
    pass


@dataclass(frozen=True)
class Sql:
    """A raw SQL expression for a SET clause, e.g. Sql("attempts + 1")."""

    expression: str


@dataclass(frozen=True)
class AttemptStart:
    worker: str


@dataclass(frozen=True)
class AttemptFinish:
    outcome: str
    error: str = ""


@dataclass(frozen=True)
class Rows:
    """The rows of a multi-row move, and a value per row for some columns of the statement.

    `ids` are the task ids; each entry of `values` is a column `r.<name>` for `where` and
    `changes` (as `Sql("r.<name>")`), with its PostgreSQL array type and one value per id, e.g.
    {"dispatch_id": ("uuid[]", [...])}. The rows are locked in id order, so that two multi-row
    moves (or a move and the published_at marks) cannot deadlock.
    """

    ids: list[str]
    values: dict[str, tuple[str, list[Any]]]


@dataclass
class Transitioned:
    task: Task
    previous_status: str


def _task_from_row(row: dict[str, Any]) -> Task:
    """A Task from a transition's returned row; the fields it lacks are deferred (loaded on
    first access, as with QuerySet.only())."""
    names, values = [], []
    for column, field in _TASK_FIELDS.items():
        if column not in row:
            continue
        value = row[column]
        if hasattr(field, "from_db_value"):  # JSON arrives as text from a raw cursor
            value = field.from_db_value(value, None, connection)
        names.append(field.attname)
        values.append(value)
    return Task.from_db("default", names, values)


def _set_clause(changes: dict[str, Any], params: list[Any]) -> str:
    parts = []
    for name, value in changes.items():
        field = Task._meta.get_field(name)
        column = field.column  # type: ignore[union-attr]
        if isinstance(value, Sql):
            parts.append(f"{column} = {value.expression}")
        else:
            parts.append(f"{column} = %s")
            params.append(field.get_db_prep_save(value, connection))  # type: ignore[union-attr]
    return "".join(f", {part}" for part in parts)


@overload
def transition(
    *,
    to: TaskStatus,
    allowed_from: frozenset[TaskStatus] | set[TaskStatus],
    task_id: uuid.UUID | str | None = ...,
    task_rows: Rows | None = ...,
    due_batch: int | None = ...,
    where: str = ...,
    where_params: tuple[Any, ...] = ...,
    changes: dict[str, Any] | None = ...,
    attempt: AttemptStart | AttemptFinish | None = ...,
    actor_id: int | None = ...,
    note: str | Sql = ...,
    wait_for_disk: bool = ...,
    returning: Literal[True] = ...,
    columns: tuple[str, ...] | None = ...,
) -> list[Transitioned]: ...


@overload
def transition(
    *,
    to: TaskStatus,
    allowed_from: frozenset[TaskStatus] | set[TaskStatus],
    task_id: uuid.UUID | str | None = ...,
    task_rows: Rows | None = ...,
    due_batch: int | None = ...,
    where: str = ...,
    where_params: tuple[Any, ...] = ...,
    changes: dict[str, Any] | None = ...,
    attempt: AttemptStart | AttemptFinish | None = ...,
    actor_id: int | None = ...,
    note: str | Sql = ...,
    wait_for_disk: bool = ...,
    returning: Literal[False],
    columns: tuple[str, ...] | None = ...,
) -> list[str]: ...


def transition(
    *,
    to: TaskStatus,
    allowed_from: frozenset[TaskStatus] | set[TaskStatus],
    task_id: uuid.UUID | str | None = None,
    task_rows: Rows | None = None,
    due_batch: int | None = None,
    where: str = "",
    where_params: tuple[Any, ...] = (),
    changes: dict[str, Any] | None = None,
    attempt: AttemptStart | AttemptFinish | None = None,
    actor_id: int | None = None,
    note: str | Sql = "",
    wait_for_disk: bool = True,
    returning: bool = True,
    columns: tuple[str, ...] | None = None,
) -> list[Transitioned] | list[str]:
    """Move one task (`task_id`), the given tasks with a value each (`task_rows`: a batch's claim
    and finish) or a batch of due waiting tasks (`due_batch`) to `to`.

    Only rows whose status is in `allowed_from` (and that match `where`) move; the caller learns
    which did from the returned list. Asking for a move the state machine forbids raises.

    `wait_for_disk=False` commits without waiting for the WAL flush (synchronous_commit off for
    this statement's transaction only), for a change whose loss in a PostgreSQL crash is safe:
    the worker's claim (docs/reliability.md, "The claim's commit"). The change is visible to
    everyone at once either way; the next synchronous commit flushes it too.

    `returning=False` for a caller that only needs to know whether (how many) rows moved: only
    the moved rows' previous statuses come back, not their columns, which spares the client
    reading 25 columns and building a Task (a quarter of a worker's pool CPU was result
    handling, half of it for the finish, whose row nobody read: docs/benchmarks.md, W10).
    `columns` (model field attnames) reads back only those; the returned Task has the others
    deferred, so that reading one costs a query instead of being wrong (W11: the worker's claim).
    """
    illegal = set(allowed_from) - sources_of(to)
    if illegal or not allowed_from:
        raise IllegalTransition(f"{sorted(illegal) or 'nothing'} -> {to} is not a legal move")
    if sum(given is not None for given in (task_id, task_rows, due_batch)) != 1:
        raise ValueError("give exactly one of task_id, task_rows and due_batch")

    rows_sql, rows_join = "", ""
    rows_params: list[Any] = []
    if task_id is not None:
        select = f"SELECT id, status FROM {TASK_TABLE} WHERE id = %s FOR UPDATE"
        select_params: list[Any] = [str(task_id)]
    elif task_rows is not None:
        names = ["id", *task_rows.values]
        arrays = ["%s::uuid[]", *(f"%s::{kind}" for kind, _ in task_rows.values.values())]
        rows_sql = f"r AS (SELECT * FROM unnest({', '.join(arrays)}) AS r({', '.join(names)})), "
        rows_params = [task_rows.ids, *(values for _, values in task_rows.values.values())]
        rows_join = "JOIN r ON r.id = old.id"
        # In id order: a multi-row lock taken in any other order can deadlock with another.
        select = (
            f"SELECT id, status FROM {TASK_TABLE} WHERE id = ANY(%s::uuid[]) ORDER BY id FOR UPDATE"
        )
        select_params = [task_rows.ids]
    else:
        # Two releasers never take the same row: each skips what the other has locked.
        select = (
            f"SELECT id, status FROM {TASK_TABLE} "
            "WHERE status = ANY(%s) AND run_at <= statement_timestamp() "
            "ORDER BY run_at LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        select_params = [[str(s) for s in allowed_from], due_batch]

    set_params: list[Any] = []
    set_sql = _set_clause(changes or {}, set_params)

    attempt_sql = ""
    attempt_params: list[Any] = []
    if isinstance(attempt, AttemptStart):
        attempt_sql = (
            f", att AS (INSERT INTO {ATTEMPT_TABLE} "
            "(task_id, number, outcome, worker, started_at, error) "
            "SELECT id, attempts, 'running', %s, statement_timestamp(), '' FROM upd)"
        )
        attempt_params = [attempt.worker[:200]]
    elif isinstance(attempt, AttemptFinish):
        attempt_sql = (
            f", att AS (UPDATE {ATTEMPT_TABLE} a "
            "SET outcome = %s, finished_at = statement_timestamp(), error = %s "
            "FROM upd WHERE a.task_id = upd.id AND a.number = upd.attempts)"
        )
        attempt_params = [attempt.outcome, attempt.error]

    # A task that ends owes its callback: the outbox row is written by this same statement, so a
    # task never ends without it, nor gets one without ending. Only terminal moves carry the CTE
    # (the claim and the release are untouched), and a row without a callback_url inserts nothing.
    callback_sql = ""
    callback_params: list[Any] = []
    if to in FINAL_STATES:
        callback_sql = (
            f", cb AS (INSERT INTO {CALLBACK_TABLE} "
            "(task_id, url, status, attempts, next_attempt_at, last_error, created_at) "
            "SELECT id, callback_url, %s, 0, statement_timestamp(), '', statement_timestamp() "
            "FROM upd WHERE callback_url <> '')"
        )
        callback_params = [str(to)]

    # Only a moved row makes the final SELECT read `cfg`, and so set the option.
    no_wait_sql = (
        "" if wait_for_disk else "cfg AS (SELECT set_config('synchronous_commit', 'off', true)), "
    )
    if isinstance(note, Sql):
        note_sql, note_params = f"left({note.expression}, 2000)", []
    else:
        note_sql, note_params = "%s", [note[:2000]]
    sql = f"""
        WITH {no_wait_sql}{rows_sql}old AS ({select}),
        upd AS (
            UPDATE {TASK_TABLE} t SET status = %s, updated_at = statement_timestamp(){set_sql}
            FROM old {rows_join} WHERE t.id = old.id AND old.status = ANY(%s) {where}
            RETURNING {_RETURNED_COLUMNS}, old.status AS previous_status
        ),
        hist AS (
            INSERT INTO {HISTORY_TABLE}
                (task_id, from_status, to_status, at, attempt, actor_id, note)
            SELECT id, previous_status, %s, statement_timestamp(), attempts, %s, {note_sql}
            FROM upd
        ){attempt_sql}{callback_sql}
        SELECT {_selected(returning, columns)} FROM upd{"" if wait_for_disk else ", cfg"}
    """
    params = [
        *rows_params,
        *select_params,
        str(to),
        *set_params,
        [str(s) for s in allowed_from],
        *where_params,
        str(to),
        actor_id,
        *note_params,
        *attempt_params,
        *callback_params,
    ]
    with prepared_cursor() as cursor:
        cursor.execute(sql, params)
        if not returning:
            return [previous for (previous,) in cursor.fetchall()]
        names = [column.name for column in cursor.description]
        rows = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]
    return [Transitioned(_task_from_row(row), row["previous_status"]) for row in rows]


@functools.cache  # once per call site's shape: the claim asks for it on every task
def _selected(returning: bool, columns: tuple[str, ...] | None) -> str:
    """The transition statement's final SELECT list."""
    if not returning:
        return "upd.previous_status"
    if columns is None:
        return "upd.*"
    unknown = set(columns) - {field.attname for field in _TASK_FIELDS.values()}
    if unknown or "id" not in columns:
        raise ValueError(f"columns must name Task fields and include id: {sorted(unknown)}")
    names = [column for column, field in _TASK_FIELDS.items() if field.attname in columns]
    return ", ".join(f"upd.{name}" for name in [*names, "previous_status"])


def transition_one(**kwargs: Any) -> Transitioned | None:
    moved = transition(**kwargs)
    return moved[0] if moved else None


def transition_one_moved(**kwargs: Any) -> bool:
    """transition() of one task without reading its row back: whether it moved."""
    return bool(transition(**kwargs, returning=False))


# --- a new dispatch for a queued task -------------------------------------------------------------

# What a republish selects: (the candidate rows' condition, their order). Each runs on the rows of
# `status = queued` only, takes at most `limit` of them and skips rows another transaction holds
# (a claim in progress: its outcome decides, and a skipped task is still due next time).
_REDISPATCH_CANDIDATES = {
    # Queued, and no message ever confirmed (the partial index task_unpublished).
    "unconfirmed": ("published_at IS NULL AND updated_at < %s", "updated_at"),
    # Queued with a confirmed message that is gone: its queue holds no ready message.
    "lost": ("published_at < %s AND queue = ANY(%s)", "published_at"),
    # The given (id, dispatch_id) pairs: messages whose publish failed before their confirm.
    "pairs": ("(id, dispatch_id) IN (SELECT * FROM unnest(%s::uuid[], %s::uuid[]))", "id"),
}


RedispatchKind = Literal["unconfirmed", "lost", "pairs"]


def redispatch(kind: RedispatchKind, *params: Any, limit: int) -> list[Task]:
    """Give queued tasks a new dispatch_id (published_at cleared) before their message is sent
    again, and return them (id, dispatch_id, queue, type).

    A message sent again must not carry its first copy's dispatch_id: that copy may be in a queue
    after all (a confirm that was slow or lost with its connection). With one dispatch_id each,
    the claim drops whichever copy is stale, and a redelivered message whose task is running is
    always its attempt's own, so taking it for a lost attempt is right (docs/reliability.md).
    Conditional, like every move: a task claimed meanwhile (or held by a claim now) is left as
    it is, and its first message was the one that counted.
    """
    condition, order = _REDISPATCH_CANDIDATES[kind]
    queued = TaskStatus.QUEUED.value
    sql = (
        f"UPDATE {TASK_TABLE} t "
        "SET dispatch_id = gen_random_uuid(), published_at = NULL, updated_at = now() "
        f"FROM (SELECT id, dispatch_id FROM {TASK_TABLE} WHERE status = %s AND {condition} "
        f"ORDER BY {order} LIMIT %s FOR UPDATE SKIP LOCKED) s "
        "WHERE t.id = s.id AND t.status = %s AND t.dispatch_id = s.dispatch_id "
        "RETURNING t.id, t.dispatch_id, t.queue, t.type"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [queued, *params, limit, queued])
        rows = cursor.fetchall()
    return [
        Task(id=task_id, dispatch_id=dispatch_id, queue=queue, type=task_type)
        for task_id, dispatch_id, queue, task_type in rows
    ]
