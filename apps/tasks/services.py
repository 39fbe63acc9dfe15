"""Task writes: create, change, cancel, retry, delete, and beat's housekeeping.

Every status change goes through `apps.tasks.transitions.transition`.
"""

import functools
import hashlib
import json
import logging
import os
import uuid
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models import Model
from django.db.models.sql import InsertQuery
from django.utils import timezone
from rest_framework import serializers

from apps.accounts.models import User
from apps.callbacks.services import check_callback_url
from apps.core.exceptions import (
    ApplicationError,
    Conflict,
    NotFound,
    flatten_detail,
    validation_summary,
)
from apps.core.parsers import json_problem
from apps.handlers.registry import (
    AnyPayload,
    TaskTypeSpec,
    get_task_type,
    require_enabled_task_type,
    require_task_type,
    validate_payload,
)
from apps.monitoring.models import TaskCount
from apps.tasks import publisher, slots
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.rows import NULL, RowTemplate, escape
from apps.tasks.states import (
    ACTIVE_STATES,
    FINAL_STATES,
    NOT_STARTED_STATES,
    WAITING_STATES,
    TaskStatus,
)
from apps.tasks.topology import queue_depths
from apps.tasks.transitions import Sql, prepared_cursor, redispatch, transition, transition_one

logger = logging.getLogger(__name__)
S = TaskStatus
_UNSET: Any = object()


def _check_max_retries(value: int, spec: TaskTypeSpec) -> None:
    limit = spec.retries_limit  # the type's own (set in the admin), else MAX_RETRIES_LIMIT
    if not 0 <= value <= limit:
        raise ApplicationError(
            f"max_retries must be between 0 and {limit}.",
            code="validation_error",
            fields={"max_retries": [f"Ensure this value is between 0 and {limit}."]},
        )


def _check_run_at(run_at: datetime | None) -> None:
    if run_at is not None and run_at <= timezone.now():
        raise ApplicationError(
            "run_at must be in the future.",
            code="validation_error",
            fields={"run_at": ["Must be in the future (RFC 3339, e.g. 2030-01-01T12:00:00Z)."]},
        )


def _check_payload_storable(payload: Any) -> None:
    """No NUL, lone surrogate, NaN or Infinity, or deep nesting (the API refuses them already;
    other callers too)."""
    problem = json_problem(payload, root="payload")
    if problem is not None:
        field = problem.split(":", 1)[0]
        raise ApplicationError(
            f"Invalid input: {problem}", code="validation_error", fields={field: [problem]}
        )


def _payload_json(payload: Any) -> str:
    """The payload as JSON text; a 400 if it is not JSON that jsonb takes (allow_nan=False:
    NaN and Infinity were a DataError, a 500, at the INSERT)."""
    try:
        return json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError):
        raise ApplicationError(
            "Invalid input: payload: not JSON.",
            code="validation_error",
            fields={"payload": ["Value must be valid JSON."]},
        ) from None


def _check_payload_size(payload: Any) -> None:
    limit = settings.TASKFLOW["MAX_PAYLOAD_BYTES"]
    if len(_payload_json(payload)) > limit:
        raise ApplicationError(
            f"The payload is larger than {limit} bytes.",
            code="payload_too_large",
            fields={"payload": [f"At most {limit} bytes of JSON."]},
            status_code=413,
        )


_ACTIVE_COUNT_SQL = (
    f"SELECT coalesce(sum(n), 0) FROM {TaskCount._meta.db_table} "  # noqa: S608 (a table name)
    "WHERE owner_id = %s AND status = ANY(%s)"
)
_ACTIVE_STATES = sorted(str(state) for state in ACTIVE_STATES)


def _check_active_cap(owner_id: int, adding: int = 1) -> None:
    """429 if `adding` more active tasks would take the owner past MAX_ACTIVE_TASKS_PER_USER.

    Reads the owner's active count from the monitoring rollup (TaskCount), which PostgreSQL's
    triggers on tasks_task keep exact in the same statement as every change: a few rows per type
    and shard, however many tasks the owner has (it read up to `cap` entries of the
    task_owner_active index before: 12% of a create in `make bench`). Concurrent creates can pass
    it together and overshoot by a few; it bounds, it does not meter. (A single create runs the
    same count inside its INSERT statement instead: `_insert_with_creation_record`.)
    """
    cap = settings.TASKFLOW["MAX_ACTIVE_TASKS_PER_USER"]
    if not cap:
        return
    active = 0
    if adding <= cap:
        # Raw SQL: the ORM's building of this aggregate cost more than PostgreSQL's running it.
        with connection.cursor() as cursor:
            cursor.execute(_ACTIVE_COUNT_SQL, [owner_id, _ACTIVE_STATES])
            active = cursor.fetchone()[0]
    if adding > cap or active + adding > cap:
        raise _active_cap_error(cap)


def _active_cap_error(cap: int) -> ApplicationError:
    return ApplicationError(
        f"You have too many active tasks: at most {cap} may be waiting or running at once. "
        "Wait for some to finish, or cancel some.",
        code="too_many_active_tasks",
        status_code=429,
        extra={"limit": cap},
    )


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


_KEY_LENGTH: int = Task._meta.get_field("idempotency_key").max_length  # type: ignore[assignment]
_KEY_CONSTRAINT = "task_unique_idempotency_key_per_owner"
# A bulk create's tasks hold its key: the first task the key itself, task i (from 1) the key and
# "#bulk<i>". A replay finds all of them by their keys, and the key itself, held as a single
# create holds it, makes a bulk and a single create with one key exclude each other through the
# unique constraint (also when they race), as two requests of one kind do.
_BULK_KEY_SUFFIX = "#bulk"
# A bulk's tasks carry the fingerprint of the whole request, marked (a single create's is a bare
# sha256 in hex, 64 characters, the column's length): a create of either kind that meets the
# other's task can say so rather than "a different body".
_BULK_FINGERPRINT_PREFIX = "bulk:"


def bulk_idempotency_key_max_length() -> int:
    """The longest key a bulk create takes: its last task's key must fit the column."""
    last = settings.TASKFLOW["BULK_MAX_TASKS"] - 1
    return _KEY_LENGTH - len(f"{_BULK_KEY_SUFFIX}{last}")


def check_idempotency_key(key: str, *, bulk: bool = False) -> None:
    """A 400 unless `key` is 1 to N printable characters: N is the column's length, or less for
    a bulk create (`bulk_idempotency_key_max_length`). Printable: a NUL reached PostgreSQL (which
    cannot store it) as a 500."""
    longest = bulk_idempotency_key_max_length() if bulk else _KEY_LENGTH
    if 1 <= len(key) <= longest and key.isprintable():
        return
    if bulk:
        message = (
            f"The Idempotency-Key header of a bulk create must be 1 to {longest} printable "
            f"characters: each task's key is the header and {_BULK_KEY_SUFFIX}<n>, at most "
            f"{_KEY_LENGTH} characters."
        )
        field = f"Must be 1 to {longest} printable characters (a bulk adds {_BULK_KEY_SUFFIX}<n>)."
    else:
        message = f"The Idempotency-Key header must be 1 to {longest} printable characters."
        field = f"Must be 1 to {longest} printable characters."
    raise ApplicationError(message, code="validation_error", fields={"Idempotency-Key": [field]})


def check_type_and_payload(
    *, owner: User, type: str, payload: Any
) -> tuple[TaskTypeSpec, dict[str, Any]]:
    """What a create checks of its type and payload, with the create's errors: the type exists
    and is enabled, the payload is storable, within MAX_PAYLOAD_BYTES and valid for the type.
    Returns the type and the payload as a task would store it. apps.schedules checks a
    schedule's payload with it, so that a schedule holds only what a create takes."""
    spec = require_enabled_task_type(type)  # a type staff disabled takes no new tasks
    _check_payload_storable(payload)
    _check_payload_size(payload)
    return spec, validate_payload(spec, payload, owner=owner)


def _default_max_retries(spec: TaskTypeSpec) -> int:
    return spec.default_max_retries  # the type's own, else DEFAULT_MAX_RETRIES


def _new_task(
    *,
    owner: User,
    type: str,
    payload: Any,
    max_retries: int | None = None,
    run_at: datetime | None = None,
    callback_url: str = "",
) -> Task:
    """A validated, unsaved task: every rule a create must pass, in one place."""
    spec, clean_payload = check_type_and_payload(owner=owner, type=type, payload=payload)
    if max_retries is None:
        max_retries = _default_max_retries(spec)
    _check_max_retries(max_retries, spec)
    _check_run_at(run_at)
    if callback_url:
        check_callback_url(callback_url)
    postponed = run_at is not None
    return Task(
        owner=owner,
        type=spec.name,
        payload=clean_payload,
        queue=spec.queue.value,
        status=S.POSTPONED if postponed else S.QUEUED,
        max_retries=max_retries,
        run_at=run_at,
        dispatch_id=None if postponed else uuid.uuid4(),
        callback_url=callback_url,
    )


def _creation_record(task: Task, owner: User) -> TaskStatusChange:
    return TaskStatusChange(
        task=task,
        from_status="",
        to_status=task.status,
        at=task.created_at,
        actor=owner,
        note="created",
    )


@functools.cache
def _insert_template(model: type[Model], numbered_by_database: bool) -> tuple[str, tuple[Any, ...]]:
    """The INSERT the ORM's save() runs for one `model` row, and the fields of its placeholders
    in order: built by the ORM's compiler once per process (building it for every create was
    ~8% of a create's CPU)."""
    meta = model._meta
    unset_id = meta.auto_field if numbered_by_database else None  # the database numbers it
    fields = tuple(f for f in meta.local_concrete_fields if f is not unset_id)
    # Plain placeholders only: a field with its own (get_placeholder) would need the compiler.
    assert not any(hasattr(f, "get_placeholder") for f in fields), meta.label
    query = InsertQuery(model)
    query.insert_values(fields, [model()])
    [(sql, _)] = query.get_compiler(connection=connection).as_sql()
    return sql, fields


def _insert_params(obj: Task | TaskStatusChange) -> list[Any]:
    """The parameters the ORM's save() would give `_insert_template`'s INSERT for `obj` (its
    compiler's `pre_save`, which applies auto_now, and `get_db_prep_save` of each field)."""
    _, fields = _insert_template(type(obj), obj.pk is None)
    return [f.get_db_prep_save(f.pre_save(obj, True), connection=connection) for f in fields]


def _values_as_select(insert_sql: str) -> tuple[str, str]:
    """`INSERT INTO t (cols) VALUES (%s, ...)` -> (`INSERT INTO t (cols)`, `SELECT %s, ...`): an
    INSERT ... SELECT can have a WHERE (PostgreSQL types its placeholders by the target columns,
    as in VALUES)."""
    head, values = insert_sql.split(" VALUES ", 1)
    assert values.startswith("("), insert_sql
    assert values.endswith(")"), insert_sql
    return head, f"SELECT {values[1:-1]}"


@functools.cache
def _create_statement(capped: bool) -> str:
    """The single create's statement: the task and its `created` history row; with `capped`,
    written only while the owner has fewer active tasks than the cap (three extra parameters
    after the task's: owner id, the active states, the cap)."""
    task_sql, _ = _insert_template(Task, False)
    record_sql, _ = _insert_template(TaskStatusChange, True)
    if not capped:
        return f"WITH task AS ({task_sql}) {record_sql}"
    task_head, task_select = _values_as_select(task_sql)
    record_head, record_select = _values_as_select(record_sql)
    return (
        f"WITH task AS ({task_head} {task_select} WHERE ({_ACTIVE_COUNT_SQL}) < %s RETURNING 1) "
        f"{record_head} {record_select} FROM task"
    )


def _insert_with_creation_record(task: Task, owner: User, *, active_cap: int = 0) -> bool:
    """The task and its `created` history row in one statement: one round trip, and atomic by
    itself, where a transaction of two INSERTs was four (BEGIN, INSERT, INSERT, COMMIT).

    With `active_cap`, the statement writes nothing if the owner already has that many active
    tasks (the count `_check_active_cap` reads, read inside the INSERT: its own round trip was
    14% of a create in `make bench`): returns whether the task was written. The statement is
    prepared once per connection (the transitions' cursor): PostgreSQL parsed and planned
    it on every create before."""
    task_params = _insert_params(task)
    record_params = _insert_params(_creation_record(task, owner))  # after created_at is set
    cap_params = [owner.id, _ACTIVE_STATES, active_cap] if active_cap else []
    with prepared_cursor() as cursor:
        cursor.execute(
            _create_statement(bool(active_cap)), [*task_params, *cap_params, *record_params]
        )
        written = cursor.rowcount == 1
    if written:
        task._state.adding = False
        task._state.db = connection.alias
    return written


def task_create(
    *,
    owner: User,
    type: str,
    payload: Any,
    max_retries: int | None = None,
    run_at: datetime | None = None,
    idempotency_key: str | None = None,
    callback_url: str = "",
) -> tuple[Task, bool]:
    """Create a task and publish it after commit. Returns (task, created).

    With an idempotency key, a repeat of the same request returns the first task; the same key
    with a different request is a 409.
    """
    fingerprint = ""
    if idempotency_key:
        spec = require_task_type(type)
        if max_retries is None:  # an explicit default and an omitted one are the same request
            max_retries = _default_max_retries(spec)
        # The callback only when given: the keys of requests without one keep their fingerprint.
        parts = (type, payload, max_retries, run_at, *([callback_url] if callback_url else []))
        fingerprint = _fingerprint(*parts)
        existing = Task.objects.filter(owner=owner, idempotency_key=idempotency_key).first()
        if existing is not None:
            # A repeat is answered even once its run_at has passed: it asks for nothing new.
            return _idempotent_replay(existing, fingerprint), False

    task = _new_task(
        owner=owner,
        type=type,
        payload=payload,
        max_retries=max_retries,
        run_at=run_at,
        callback_url=callback_url,
    )
    task.idempotency_key = idempotency_key or None
    task.idempotency_fingerprint = fingerprint
    cap = settings.TASKFLOW["MAX_ACTIVE_TASKS_PER_USER"]
    try:
        # In a caller's transaction, a savepoint (a refused idempotency key must not abort it).
        with transaction.atomic() if connection.in_atomic_block else nullcontext():
            # The active-task cap is checked by the INSERT itself (`_check_active_cap`'s count).
            if not _insert_with_creation_record(task, owner, active_cap=cap):
                raise _active_cap_error(cap)
            if task.status == S.QUEUED:
                publisher.publish_on_commit([publisher.dispatch_for(task)], from_request=True)
    except IntegrityError:
        if not idempotency_key:
            raise
        # A concurrent request with the same key won the race.
        existing = Task.objects.get(owner=owner, idempotency_key=idempotency_key)
        return _idempotent_replay(existing, fingerprint), False
    return task, True


class NewTask(NamedTuple):
    """A task the bulk create wrote: what its callers read back, without a model instance
    (building 1000 of them, and preparing their 25 fields each, was a fifth of a request)."""

    id_text: str
    type: str
    status: str
    run_at: datetime | None
    dispatch_id_text: str | None

    @property
    def id(self) -> uuid.UUID:
        return uuid.UUID(self.id_text)

    @property
    def dispatch_id(self) -> uuid.UUID | None:
        return uuid.UUID(self.dispatch_id_text) if self.dispatch_id_text else None


def _uuid4_texts(count: int) -> list[str]:
    """`count` random (version 4) UUIDs as text: what str(uuid.uuid4()) gives, from one read of
    the OS's random source (uuid4 and str() per id were ~2 us each, 2000 ids a request)."""
    digits = os.urandom(16 * count).hex()
    variant = "89ab89ab89ab89ab"  # the top two bits of the clock_seq octet are 10
    return [
        f"{d[:8]}-{d[8:12]}-4{d[13:16]}-{variant[int(d[16], 16)]}{d[17:20]}-{d[20:]}"
        for d in (digits[i : i + 32] for i in range(0, 32 * count, 32))
    ]


class _BulkType:
    """What the bulk create checks and writes for one task type, looked up once per call."""

    def __init__(self, spec: TaskTypeSpec, owner: User) -> None:
        self.spec = spec
        self.default_max_retries = _default_max_retries(spec)
        self.retries_limit = spec.retries_limit
        self.queue = spec.queue.value
        self.name_text, self.queue_text = escape(spec.name), escape(self.queue)  # COPY text
        self.time_limit_seconds = spec.time_limit_seconds
        # One payload serializer for every item of the type: validate_payload's checks through
        # run_validation, as DRF's many=True does for each item of a list (a serializer built per
        # item, deep-copying its fields, was a fifth of `_new_task`).
        self._serializer = spec.payload_serializer(context={"owner": owner})
        self._any_payload = type(self._serializer) is AnyPayload

    def clean_payload(self, payload: Any) -> Any:
        """validate_payload(spec, payload, owner=owner), with the same errors."""
        if not isinstance(payload, dict):
            return validate_payload(self.spec, payload)  # raises its "expected a JSON object"
        if self._any_payload:  # any JSON object, as it is
            return payload
        try:
            value = self._serializer.run_validation(payload)
        except serializers.ValidationError as exc:
            detail = (
                exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
            )
            fields = {
                ("payload" if key == "non_field_errors" else f"payload.{key}"): flatten_detail(v)
                for key, v in detail.items()
            }
            raise ApplicationError(
                f"Invalid payload for {self.spec.name}: {validation_summary(fields)}",
                code="validation_error",
                fields=fields,
            ) from None
        return dict(value)


def _bulk_row(
    kinds: dict[str, "_BulkType | ApplicationError"],
    owner: User,
    *,
    type: str,
    payload: Any,
    max_retries: int | None = None,
    run_at: datetime | None = None,
    callback_url: str = "",
) -> tuple[_BulkType, str, int, datetime | None, str]:
    """One item checked by `_new_task`'s rules, in its order: (its type, the payload's JSON,
    max_retries, run_at, callback_url). Raises ApplicationError as `_new_task` does."""
    kind = kinds.get(type)
    if kind is None:
        try:
            kind = _BulkType(require_enabled_task_type(type), owner)
        except ApplicationError as exc:
            kind = exc
        kinds[type] = kind
    if isinstance(kind, ApplicationError):
        raise kind
    _check_payload_storable(payload)
    text = _payload_json(payload)  # the size check's, reused for the row
    limit = settings.TASKFLOW["MAX_PAYLOAD_BYTES"]
    if len(text) > limit:
        _check_payload_size(payload)  # raises the single create's 413
    clean = kind.clean_payload(payload)
    if clean is not payload and clean != payload:
        text = json.dumps(clean)  # the serializer changed it (defaults, coercions)
    if max_retries is None:
        max_retries = kind.default_max_retries
    elif not 0 <= max_retries <= kind.retries_limit:
        _check_max_retries(max_retries, kind.spec)
    if run_at is not None:
        _check_run_at(run_at)
    if callback_url:
        check_callback_url(callback_url)
    return kind, text, max_retries, run_at, callback_url


def task_create_bulk(
    *, owner: User, items: list[dict[str, Any]], idempotency_key: str | None = None
) -> tuple[list[NewTask], bool]:
    """Create many tasks at once: all valid or none created; one transaction; one publish pass.
    Returns (the tasks, in the items' order; created).

    Errors name the item: {"tasks[3].payload.duration": [...]}. Each item passes the single
    create's rules (`_new_task`), with the type's lookups and payload serializer made once per
    call; the rows are written with COPY straight from the checked values (apps.tasks.rows).

    With an idempotency key, a repeat of the same request (the same items in the same order)
    creates nothing and returns the first request's tasks as they are now; the same key with
    another request, or a key a single create holds, is a 409 (`_bulk_keys`, `_bulk_replay`).
    """
    limit = settings.TASKFLOW["BULK_MAX_TASKS"]
    if not 1 <= len(items) <= limit:
        raise ApplicationError(
            f"Give 1 to {limit} tasks.",
            code="validation_error",
            fields={"tasks": [f"Give 1 to {limit} tasks."]},
        )
    keys: list[str] = []
    fingerprint = ""
    if idempotency_key is not None:
        check_idempotency_key(idempotency_key, bulk=True)
        keys = _bulk_keys(idempotency_key, len(items))
        fingerprint = _bulk_fingerprint(items)
        # Before the items' checks, as for a single create: a repeat is answered even once a
        # run_at has passed or the owner is at the active-task cap, since it asks for nothing new.
        replayed = _bulk_replay(owner, keys, fingerprint)
        if replayed is not None:
            return replayed, False
    kinds: dict[str, _BulkType | ApplicationError] = {}
    checked: list[tuple[_BulkType, str, int, datetime | None, str]] = []
    errors: dict[str, Any] = {}
    codes: set[str] = set()
    for index, item in enumerate(items):
        try:
            checked.append(_bulk_row(kinds, owner, **item))
        except ApplicationError as exc:
            codes.add(exc.code)
            for field, messages in (exc.fields or {"non_field_errors": [exc.message]}).items():
                errors[f"tasks[{index}].{field}"] = messages
    if errors:
        first = next(iter(errors))
        raise ApplicationError(
            f"{len(errors)} invalid field(s); nothing was created. First: {first}: "
            f"{errors[first][0] if isinstance(errors[first], list) else errors[first]}",
            # Only disabled types: say so, as a single create would.
            code="task_type_disabled" if codes == {"task_type_disabled"} else "validation_error",
            fields=errors,
        )
    _check_active_cap(owner.id, adding=len(checked))

    ids = _uuid4_texts(2 * len(checked))  # a task id and a dispatch id each
    created: list[NewTask] = []
    task_rows: list[tuple[str, ...]] = []
    history_rows: list[tuple[str, ...]] = []
    dispatches: list[publisher.Dispatch] = []
    now = timezone.now
    for number, (kind, text, max_retries, run_at, _) in enumerate(checked):
        task_id = ids[2 * number]
        at = now().isoformat()
        if run_at is None:
            status, dispatch_id, run_at_text = S.QUEUED.value, ids[2 * number + 1], NULL
            dispatches.append(
                publisher.Dispatch(
                    task_id=task_id,
                    dispatch_id=dispatch_id,
                    queue=kind.queue,
                    time_limit_seconds=kind.time_limit_seconds,
                    task_type=kind.spec.name,
                )
            )
        else:
            status, dispatch_id, run_at_text = S.POSTPONED.value, None, run_at.isoformat()
        task_rows.append(
            (
                task_id,
                kind.name_text,
                escape(text),
                kind.queue_text,
                status,
                str(max_retries),
                run_at_text,
                dispatch_id or NULL,
                at,
                at,  # updated_at: as created
            )
        )
        history_rows.append((task_id, status, at))
        created.append(NewTask(task_id, kind.spec.name, status, run_at, dispatch_id))
    if keys:
        task_rows = [(*row, escape(key)) for row, key in zip(task_rows, keys, strict=True)]
    # A column of its own only when an item has a callback: else every row takes the template's
    # "" and the COPY is the one it was.
    with_callbacks = any(item[4] for item in checked)
    if with_callbacks:
        task_rows = [(*row, escape(item[4])) for row, item in zip(task_rows, checked, strict=True)]
    try:
        # In a caller's transaction, a savepoint (a refused key must not abort it, as for a
        # single create).
        with transaction.atomic():
            _task_rows(owner, fingerprint, with_callbacks=with_callbacks).copy(task_rows)
            _history_rows(owner).copy(history_rows)
            publisher.publish_on_commit(dispatches, from_request=True)
    except IntegrityError as exc:
        if not keys or not _violates(exc, _KEY_CONSTRAINT):
            raise
        # A concurrent request holding one of the keys committed after our look-up (our COPY
        # waited for it, then failed): answer as if it had come first.
        replayed = _bulk_replay(owner, keys, fingerprint)
        if replayed is None:  # its tasks were deleted since: not for us to guess
            raise Conflict(
                "A concurrent request used this Idempotency-Key: send the request again.",
                code="idempotency_key_reused",
                fields={"Idempotency-Key": ["Used by a concurrent request."]},
            ) from None
        return replayed, False
    return created, True


def _violates(exc: IntegrityError, constraint: str) -> bool:
    """Whether `exc` is PostgreSQL's refusal by this constraint (Django's error wraps psycopg's)."""
    diag = getattr(exc.__cause__, "diag", None)
    return getattr(diag, "constraint_name", None) == constraint


def _bulk_keys(key: str, count: int) -> list[str]:
    """The keys of a bulk create's `count` tasks (see _BULK_KEY_SUFFIX)."""
    return [key, *(f"{key}{_BULK_KEY_SUFFIX}{number}" for number in range(1, count))]


def _bulk_fingerprint(items: list[dict[str, Any]]) -> str:
    """The whole request's fingerprint: each item as a single create's (`task_create`: an
    omitted max_retries is the type's default), in order; marked as a bulk's."""
    defaults: dict[Any, int | None] = {}
    parts = []
    for item in items:
        name, max_retries = item.get("type"), item.get("max_retries")
        if max_retries is None:
            if name not in defaults:
                # An unknown type has no default: the items' checks refuse it after the look-up.
                spec = get_task_type(name) if isinstance(name, str) else None
                defaults[name] = None if spec is None else _default_max_retries(spec)
            max_retries = defaults[name]
        part = (name, item.get("payload"), max_retries, item.get("run_at"))
        # The callback only when given: a request without any keeps its fingerprint.
        parts.append((*part, item["callback_url"]) if item.get("callback_url") else part)
    digest = _fingerprint(*parts)
    return _BULK_FINGERPRINT_PREFIX + digest[: len(digest) - len(_BULK_FINGERPRINT_PREFIX)]


def _bulk_replay(owner: User, keys: list[str], fingerprint: str) -> list[NewTask] | None:
    """The tasks a bulk create with these keys and fingerprint made, in order, as they are now;
    None if no task holds any of the keys; a 409 if another request holds one (or if some of
    the tasks were deleted: the answer cannot be given again). One query."""
    # Found through the unique constraint's index: (owner, key) = ANY(keys). No ORDER BY (the
    # model's ordering would sort them): the keys give the order.
    found = Task.objects.filter(owner=owner, idempotency_key__in=keys).order_by()
    rows = {
        row[0]: row
        for row in found.values_list(
            "idempotency_key",
            "idempotency_fingerprint",
            "id",
            "type",
            "status",
            "run_at",
            "dispatch_id",
        )
    }
    if not rows:
        return None
    for number, key in enumerate(keys):
        row = rows.get(key)
        if row is not None and not row[1].startswith(_BULK_FINGERPRINT_PREFIX):
            which = "This Idempotency-Key" if number == 0 else f"The key {key!r} (task {number}'s)"
            raise Conflict(
                f"{which} was already used by a single create (POST /api/tasks): use another "
                "Idempotency-Key for this bulk create.",
                code="idempotency_key_reused",
                fields={"Idempotency-Key": ["Already used by a single create (POST /api/tasks)."]},
            )
    if any(row[1] != fingerprint for row in rows.values()):
        raise _key_reused()
    if len(rows) < len(keys):
        raise Conflict(
            "Some of the tasks created with this Idempotency-Key were deleted, so the request "
            "cannot be answered again: use another key.",
            code="idempotency_key_reused",
            fields={"Idempotency-Key": ["Some of the tasks created with it were deleted."]},
        )
    return [
        NewTask(str(task_id), name, status, run_at, str(dispatch_id) if dispatch_id else None)
        for _, _, task_id, name, status, run_at, dispatch_id in (rows[key] for key in keys)
    ]


_TASK_VARYING = (
    "id",
    "type",
    "payload",
    "queue",
    "status",
    "max_retries",
    "run_at",
    "dispatch_id",
    "created_at",
    "updated_at",
)


def _task_rows(owner: User, fingerprint: str = "", *, with_callbacks: bool = False) -> RowTemplate:
    """The owner's new tasks: every column but `_TASK_VARYING` as a created task has it. With a
    bulk's idempotency fingerprint, each row also gives its key (`_bulk_keys`); with
    `with_callbacks`, then its callback_url, last."""
    keyed = ("idempotency_key",) if fingerprint else ()
    callbacks = ("callback_url",) if with_callbacks else ()
    return RowTemplate(
        Task(owner=owner, idempotency_fingerprint=fingerprint),
        (*_TASK_VARYING, *keyed, *callbacks),
    )


def _history_rows(owner: User) -> RowTemplate:
    """Their `created` history rows (`_creation_record`): task, to_status and at vary."""
    return RowTemplate(
        TaskStatusChange(from_status="", actor=owner, note="created"), ("task", "to_status", "at")
    )


def _idempotent_replay(existing: Task, fingerprint: str) -> Task:
    if existing.idempotency_fingerprint.startswith(_BULK_FINGERPRINT_PREFIX):
        # The key (or `key#bulk<n>`) of a bulk create's task (`_bulk_keys`): not this request's.
        raise Conflict(
            "This Idempotency-Key was already used by a bulk create (POST /api/tasks/bulk): use "
            "another key.",
            code="idempotency_key_reused",
            fields={"Idempotency-Key": ["Already used by a bulk create (POST /api/tasks/bulk)."]},
        )
    if existing.idempotency_fingerprint != fingerprint:
        raise _key_reused()
    return existing


def _key_reused() -> Conflict:
    return Conflict(
        "This Idempotency-Key was already used with a different request.",
        code="idempotency_key_reused",
        fields={"Idempotency-Key": ["Already used with a different request body."]},
    )


def task_update(
    *,
    task: Task,
    actor: User,
    payload: Any = _UNSET,
    run_at: datetime | None = _UNSET,
    max_retries: int = _UNSET,
) -> Task:
    """Change a task that has not started yet. A started (or finished) task is a 409."""
    changes: dict[str, Any] = {}
    if payload is not _UNSET:
        _check_payload_storable(payload)
        _check_payload_size(payload)
        changes["payload"] = validate_payload(
            require_task_type(task.type), payload, owner=task.owner
        )
    if max_retries is not _UNSET:
        _check_max_retries(max_retries, require_task_type(task.type))
        changes["max_retries"] = max_retries

    not_started = [str(s) for s in NOT_STARTED_STATES]
    with transaction.atomic():
        if run_at is not _UNSET:
            _check_run_at(run_at)
            moved = _reschedule(task=task, actor=actor, run_at=run_at, changes=changes)
            if moved is None:
                raise _not_startable_conflict(task)
            return moved
        if changes:
            updated = Task.objects.filter(id=task.id, status__in=not_started).update(
                updated_at=timezone.now(), **changes
            )
            if not updated:
                raise _not_startable_conflict(task)
    return Task.objects.get(id=task.id)


def _not_startable_conflict(task: Task) -> Conflict:
    current = _current_status(task)
    return Conflict(
        f"The task is {current}; it can only be changed before it starts.",
        code="task_already_started",
        extra={"status": current},
    )


def _reschedule(
    *, task: Task, actor: User, run_at: datetime | None, changes: dict[str, Any]
) -> Task | None:
    """Move run_at: a future time postpones the task, null runs it now."""
    # A task waiting for a free slot leaves the line: it waits for its new time instead.
    changes = {**changes, "waiting_for_slot_since": None}
    if run_at is None:
        # Postponed -> queued at once; a queued or retrying task keeps its state.
        moved = transition_one(
            task_id=task.id,
            to=S.QUEUED,
            allowed_from={S.POSTPONED},
            changes={**changes, "run_at": None, "dispatch_id": uuid.uuid4(), "published_at": None},
            actor_id=actor.id,
            note="run_at cleared: run now",
        )
        if moved:
            publisher.publish_on_commit([publisher.dispatch_for(moved.task)])
            return moved.task
        # A retrying task is released at the next tick; a queued one is already on its way.
        now = timezone.now()
        updated = Task.objects.filter(id=task.id, status=S.RETRYING).update(
            run_at=now, updated_at=now, **changes
        ) or Task.objects.filter(id=task.id, status=S.QUEUED).update(updated_at=now, **changes)
        return Task.objects.get(id=task.id) if updated else None
    if task.status == S.RETRYING:
        updated = Task.objects.filter(id=task.id, status=S.RETRYING).update(
            run_at=run_at, updated_at=timezone.now(), **changes
        )
        return Task.objects.get(id=task.id) if updated else None
    moved = transition_one(
        task_id=task.id,
        to=S.POSTPONED,
        allowed_from={S.QUEUED},
        changes={**changes, "run_at": run_at, "dispatch_id": None, "published_at": None},
        actor_id=actor.id,
        note=f"postponed to {run_at.isoformat()}",
    )
    if moved:
        return moved.task
    updated = Task.objects.filter(id=task.id, status=S.POSTPONED).update(
        run_at=run_at, updated_at=timezone.now(), **changes
    )
    return Task.objects.get(id=task.id) if updated else None


@transaction.atomic
def task_cancel(*, task: Task, actor: User | None) -> Task:
    """Cancel a waiting task at once; ask a running one to stop (its handler ends it)."""
    moved = transition_one(
        task_id=task.id,
        to=S.CANCELLED,
        allowed_from=NOT_STARTED_STATES,
        changes={
            "finished_at": timezone.now(),
            "dispatch_id": None,
            "run_at": None,
            "waiting_for_slot_since": None,
        },
        actor_id=actor.id if actor else None,
        note="cancelled",
    )
    if moved:
        return moved.task
    now = timezone.now()
    if Task.objects.filter(id=task.id, status=S.RUNNING, cancel_requested_at__isnull=True).update(
        cancel_requested_at=now
    ):
        task.status_changes.create(
            from_status=S.RUNNING,
            to_status=S.RUNNING,
            at=now,
            attempt=task.attempts,
            actor=actor,
            note="cancel requested; the handler stops at its next check",
        )
        return Task.objects.get(id=task.id)
    current = _current_status(task)
    if current == S.RUNNING:
        return Task.objects.get(id=task.id)  # already asked
    raise Conflict(
        f"The task is {current}; only a waiting or running task can be cancelled.",
        code="task_not_cancellable",
        extra={"status": current},
    )


@transaction.atomic
def task_retry(*, task: Task, actor: User | None) -> Task:
    """Run a failed (or dead-lettered, or cancelled) task again, with a fresh retry budget."""
    if task.status in FINAL_STATES:  # it would become active again: the owner's cap holds
        _check_active_cap(task.owner_id)
    was_dead = task.dead_lettered_at
    moved = transition_one(
        task_id=task.id,
        to=S.QUEUED,
        allowed_from={S.FAILED, S.CANCELLED},
        changes={
            "retries": 0,
            "run_at": None,
            "dispatch_id": uuid.uuid4(),
            "published_at": None,
            "finished_at": None,
            "cancel_requested_at": None,
            "dead_lettered_at": None,
            "dead_letter_reason": "",
            "error": "",
            "progress": 0,
            "progress_message": "",
            "waiting_for_slot_since": None,
        },
        actor_id=actor.id if actor else None,
        note="replayed from the dead-letter queue" if was_dead else "retried by hand",
    )
    if moved is None:
        current = _current_status(task)
        raise Conflict(
            f"The task is {current}; only a failed or cancelled task can be retried.",
            code="task_not_retryable",
            extra={"status": current},
        )
    publisher.publish_on_commit([publisher.dispatch_for(moved.task)])
    return moved.task


def task_delete(*, task: Task) -> None:
    deleted, _ = Task.objects.filter(id=task.id, status__in=list(FINAL_STATES)).delete()
    if not deleted:
        current = _current_status(task)
        raise Conflict(
            f"The task is {current}; only a finished task can be deleted.",
            code="task_not_finished",
            extra={"status": current},
        )


def _current_status(task: Task) -> str:
    """The task's status now, for a move that did not apply; a 404 if the task is gone: the
    request read it, then its owner or the retention (delete_expired_tasks) deleted it."""
    current = Task.objects.filter(id=task.id).values_list("status", flat=True).first()
    if current is None:
        raise NotFound("No such task.", code="task_not_found")
    return current


# --- Housekeeping run by beat (tasks.release_due) ---------------------------------------------


def release_due_tasks(*, batch_size: int | None = None, max_batches: int = 20) -> int:
    """Queue postponed and retrying tasks whose run_at has come, and tasks waiting for a slot
    of their type's concurrency limit where one is free; publish them after commit."""
    batch_size = batch_size or settings.TASKFLOW["RELEASE_BATCH_SIZE"]
    released = 0
    for _ in range(max_batches):
        with transaction.atomic():
            moved = transition(
                to=S.QUEUED,
                allowed_from=WAITING_STATES,
                due_batch=batch_size,
                changes={
                    "dispatch_id": Sql("gen_random_uuid()"),
                    "published_at": None,
                    "run_at": None,
                },
                note="released",
            )
            publisher.publish_on_commit([publisher.dispatch_for(m.task) for m in moved])
        released += len(moved)
        if len(moved) < batch_size:
            break
    return released + slots.release_waiting_everywhere()


def delete_expired_tasks(
    *, retention_days: int | None = None, batch_size: int = 1000, max_batches: int = 100
) -> int:
    """Delete the tasks that finished more than TASK_RETENTION_DAYS ago, with their attempts and
    history (0: none). In batches of one transaction each, so that a first run on a large table
    neither holds one long transaction nor blocks the workers. Returns how many tasks went."""
    days = settings.TASKFLOW["TASK_RETENTION_DAYS"] if retention_days is None else retention_days
    if days <= 0:
        return 0
    cutoff = timezone.now() - timedelta(days=days)
    finished = list(FINAL_STATES)
    deleted = 0
    for _ in range(max_batches):
        with transaction.atomic():
            # SKIP LOCKED: a task a user is retrying by hand right now is left for the next run.
            batch = list(
                Task.objects.filter(status__in=finished, finished_at__lt=cutoff)
                .order_by()
                .select_for_update(skip_locked=True)
                .values_list("id", flat=True)[:batch_size]
            )
            if batch:
                Task.objects.filter(id__in=batch, status__in=finished).delete()
        deleted += len(batch)
        if len(batch) < batch_size:
            break
    if deleted:
        logger.info("Deleted %d task(s) finished more than %d day(s) ago", deleted, days)
    return deleted


def _publish_again_on_commit(tasks: list[Task]) -> list[int]:
    """Publish the tasks' new dispatches once the transaction commits; the list it returns then
    holds how many the broker confirmed (at once when the caller's block is the outermost)."""
    confirmed: list[int] = []
    if tasks:
        dispatches = [publisher.dispatch_for(task) for task in tasks]
        transaction.on_commit(lambda: confirmed.append(publisher.publish_now(dispatches)))
    return confirmed


def republish_unconfirmed(*, older_than_seconds: float | None = None, limit: int = 1000) -> int:
    """Publish again queued tasks whose message the broker never confirmed."""
    if older_than_seconds is None:
        older_than_seconds = settings.TASKFLOW["REPUBLISH_AFTER_SECONDS"]
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    with transaction.atomic():
        # A new dispatch each (the first message may yet be in a queue); published after commit.
        stale = redispatch("unconfirmed", cutoff, limit=limit)
        confirmed = _publish_again_on_commit(stale)
    if stale:
        logger.info(
            "Published again %d queued task(s) with no confirmed message (%d confirmed)",
            len(stale),
            sum(confirmed),
        )
    return sum(confirmed)


def republish_lost(*, older_than_seconds: float | None = None, limit: int = 1000) -> int:
    """Publish again queued tasks whose confirmed message is gone (a purged or deleted queue).

    Only for queues with no ready message: there, a task queued long ago and still not claimed
    has no message left. A copy that was in fact still held by a busy worker is harmless: the
    task gets a new dispatch, so that copy is stale when it is delivered.
    """
    from taskflow.celery import app

    if older_than_seconds is None:
        older_than_seconds = settings.TASKFLOW["LOST_MESSAGE_AFTER_SECONDS"]
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    waiting_queues = set(
        Task.objects.filter(status=S.QUEUED, published_at__lt=cutoff)
        .values_list("queue", flat=True)
        .distinct()
    )
    if not waiting_queues:
        return 0
    with app.connection_for_write() as connection:
        depths = queue_depths(connection, sorted(waiting_queues))
    empty = [queue for queue, depth in depths.items() if depth == 0]
    if not empty:
        return 0
    with transaction.atomic():
        # A new dispatch each: a copy still held by a busy worker becomes stale, not a second run.
        lost = redispatch("lost", cutoff, empty, limit=limit)
        confirmed = _publish_again_on_commit(lost)
    if lost:
        logger.warning(
            "Published again %d queued task(s) whose message is gone from %s (%d confirmed)",
            len(lost),
            empty,
            sum(confirmed),
        )
    return sum(confirmed)


def reap_expired_leases(*, limit: int = 100) -> int:
    """Running attempts past their lease are lost: their worker died without the broker noticing."""
    from apps.tasks.execution import attempt_lost

    expired = Task.objects.filter(
        status=S.RUNNING, lease_expires_at__lt=timezone.now()
    ).values_list("id", "attempts")[:limit]
    reaped = 0
    for task_id, attempt_number in expired:
        try:
            outcome = attempt_lost(
                task_id=task_id,
                attempt=attempt_number,
                reason="lease expired: the worker stopped reporting",
            )
        except (OperationalError, InterfaceError):
            raise  # the database is away: the next tick tries them all again
        except Exception:
            # One task that cannot be settled must not stop the reaping of the others, tick
            # after tick: it stays running (and is tried again next tick), and says why here.
            logger.exception("Could not settle the expired lease of task %s", task_id)
            continue
        if outcome is not None and outcome.status == S.FAILED:
            try:
                publisher.publish_dead_letter(
                    task_id=task_id, dispatch_id=outcome.dispatch_id, reason="lease_expired"
                )
            except Exception as exc:
                # No broker: record it here rather than leave the task failed but unmarked.
                logger.warning("Could not dead-letter task %s through RabbitMQ: %s", task_id, exc)
                task_record_dead_letter(
                    task_id=task_id,
                    dispatch_id=None,
                    reason="lease expired (recorded without the broker)",
                    at=timezone.now(),
                )
        reaped += outcome is not None
    return reaped


def task_record_dead_letter(
    *, task_id: uuid.UUID | str, dispatch_id: str | None, reason: str, at: datetime
) -> bool:
    """Note on a failed task that its message reached the dead-letter queue, and why."""
    query = Task.objects.filter(id=task_id, status=S.FAILED)
    if dispatch_id:
        query = query.filter(dispatch_id=dispatch_id)
    return bool(query.update(dead_lettered_at=at, dead_letter_reason=reason[:200]))
