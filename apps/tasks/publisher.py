"""Publishing execution messages, always after the task row has committed.

The database row is the truth; a message is only a nudge. A task whose message did not reach the
broker stays `queued` with `published_at` unset, and the releaser publishes it again.

Messages go out in batches on one channel in confirm mode: every message of a batch is written
first, then the broker's confirms (`basic.ack`, often one for many with `multiple`) are awaited
together, so a batch of 1000 costs one wait for RabbitMQ's disk instead of 1000. Only the
dispatches the broker acked get `published_at`; a nack, a timeout or a lost connection leaves the
rest unset, for `services.republish_unconfirmed`.

A message carries one task, or, for a type that runs in batches (`batch_size` in its handler:
docs/handlers.md), up to that many tasks of the type that were published together: the worker
claims and finishes them in one statement each (apps.tasks.execution.handle_batch).
"""

import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from weakref import WeakKeyDictionary

from amqp import spec
from amqp.exceptions import RecoverableConnectionError
from amqp.method_framing import frame_writer
from amqp.serialization import dumps as amqp_dumps
from celery.utils.nodenames import anon_nodename
from django.db import DatabaseError, close_old_connections, connection, transaction
from django.utils import timezone
from kombu import Connection, Producer, pools
from kombu.common import maybe_declare
from kombu.serialization import dumps

from apps.tasks.models import Task
from apps.tasks.queues import DEAD_LETTER_EXCHANGE_NAME, dead_letter_exchange
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import redispatch

logger = logging.getLogger(__name__)

EXECUTE_TASK_NAME = "tasks.execute"
EXECUTE_BATCH_TASK_NAME = "tasks.execute_batch"
# Give the handler's own limit a margin before Celery's soft limit fires, and a second margin
# before the hard kill.
SOFT_LIMIT_MARGIN_SECONDS = 5
HARD_LIMIT_MARGIN_SECONDS = 30
# At most this many messages in flight before their confirms are awaited.
CONFIRM_WINDOW = 1000
# Messages written to the socket at a time (about 100 KB).
WRITE_BATCH = 128
# Kinds of message (thread, queue, time limit, task type, tasks) a channel keeps templates for.
MAX_TEMPLATES_PER_CHANNEL = 512
# How long to wait for a window's confirms before giving up on the unconfirmed ones (they stay
# unmarked, and the releaser publishes them again).
CONFIRM_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Dispatch:
    # UUIDs, or their text (the bulk create makes its ids as text: apps.tasks.services).
    task_id: uuid.UUID | str
    dispatch_id: uuid.UUID | str
    queue: str
    time_limit_seconds: int | None = None
    # Carried in the message so that the worker can admit and claim without reading the row first.
    task_type: str = ""


# The dispatches one message carries: one, or a batch of a type that runs in batches.
Message = tuple[Dispatch, ...]


def messages_for(dispatches: Sequence[Dispatch]) -> list[Message]:
    """Group dispatches into messages: of a type that runs in batches (`message_batch_size`),
    up to that many of the same queue and limit together; every other dispatch alone."""
    if len(dispatches) < 2:
        return [(dispatch,) for dispatch in dispatches]
    from apps.handlers.registry import get_task_type

    sizes: dict[str, int] = {}
    messages: list[Message] = []
    open_batches: dict[tuple[str, str, int | None], list[Dispatch]] = {}
    for dispatch in dispatches:
        size = sizes.get(dispatch.task_type)
        if size is None:
            spec = get_task_type(dispatch.task_type) if dispatch.task_type else None
            size = sizes[dispatch.task_type] = spec.message_batch_size if spec else 1
        if size < 2:
            messages.append((dispatch,))
            continue
        key = (dispatch.task_type, dispatch.queue, dispatch.time_limit_seconds)
        batch = open_batches.setdefault(key, [])
        batch.append(dispatch)
        if len(batch) == size:
            messages.append(tuple(batch))
            del open_batches[key]
    messages.extend(tuple(batch) for batch in open_batches.values())
    return messages


# --- the broker side -----------------------------------------------------------------------------


# The pool key of _connection(), per process and broker URL.
_pool_keys: dict[tuple[int, str | None, str | None], Connection] = {}


def _connection() -> Connection:
    """The publishers' connection (the pool's key): the app's broker, without `confirm_publish`.

    py-amqp's `confirm_publish` transport option makes every `basic_publish` wait for its own
    confirm. These connections leave it off; `_ConfirmChannel` selects confirm mode itself.
    Made once per process and broker URL: a new kombu Connection per publish, only to look the
    pool up, was ~8% of a single create under cProfile (kombu tries `import librabbitmq` each time).
    """
    from taskflow.celery import app

    key = (os.getpid(), app.conf.broker_write_url, app.conf.broker_url)
    found = _pool_keys.get(key)
    if found is None:
        found = app.connection_for_write(transport_options={"confirm_publish": False})
        _pool_keys.clear()  # only the current one is ever looked up again
        _pool_keys[key] = found
    return found


class _ConfirmChannel:
    """One channel in confirm mode, and the delivery tags (1, 2, ...) it has handed out."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.last_tag = 0
        self.pending: dict[int, Message] = {}
        self.lowest = 1  # no tag below this is pending
        self.confirmed: list[Dispatch] = []
        self.nacked: list[Dispatch] = []
        # Message templates of this channel, by kind (see _send_window).
        self.templates: dict[tuple[Any, ...], _MessageTemplate] = {}
        # Queues declared on this channel's connection (kombu's maybe_declare copies and binds
        # the queue before it looks at its own cache: 2% of a single create under py-spy).
        self.declared: set[str] = set()
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.confirm_select()

    def _settle(self, tag: int, multiple: bool, into: list[Dispatch]) -> None:
        if multiple:  # every tag up to this one
            for each in range(self.lowest, tag + 1):
                message = self.pending.pop(each, None)
                if message is not None:
                    into.extend(message)
            self.lowest = max(self.lowest, tag + 1)
        elif (message := self.pending.pop(tag, None)) is not None:
            into.extend(message)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self.confirmed)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self.nacked)

    def sent(self, message: Message) -> None:
        self.last_tag += 1
        self.pending[self.last_tag] = message

    def wait(self, timeout: float) -> None:
        """Read confirms until none is pending; socket.timeout if the broker is too slow."""
        deadline = time.monotonic() + timeout
        while self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{len(self.pending)} publisher confirm(s) still pending")
            self.channel.connection.drain_events(timeout=remaining)

    def take_results(self) -> tuple[list[Dispatch], list[Dispatch]]:
        confirmed, nacked = self.confirmed, self.nacked
        self.confirmed, self.nacked = [], []
        return confirmed, nacked


# One confirm-mode channel per pooled connection, kept with the py-amqp connection it was opened
# on (a reconnect makes a new one, whose channels start again from tag 1).
_confirm_channels: "WeakKeyDictionary[Connection, tuple[Any, _ConfirmChannel]]" = (
    WeakKeyDictionary()
)


def _confirm_channel(conn: Connection) -> _ConfirmChannel:
    transport_connection = conn.connection
    found = _confirm_channels.get(conn)
    if found is None or found[0] is not transport_connection:
        found = (transport_connection, _ConfirmChannel(conn.channel()))
        _confirm_channels[conn] = found
    return found[1]


def _send_window(conn: Connection, confirms: _ConfirmChannel, window: Sequence[Message]) -> None:
    """Publish `window` on the confirm channel and wait until the broker settled every message."""
    from taskflow.celery import app

    channel = confirms.channel
    queues = app.amqp.queues
    for name in {m[0].queue for m in window} - confirms.declared:
        # As Celery's send_task_message does: the queue exists, with its arguments (dead letters).
        # Once per connection, as kombu's cache would (a new connection gets a new channel here).
        maybe_declare(queues[name], channel)
        confirms.declared.add(name)
    # Kept with the channel (its id and frame size are in the frames) across windows and calls:
    # a single create built one every time (~8% of it under cProfile). The thread is part of the
    # kind, as `reply_to` is (Celery's per-thread oid).
    templates = confirms.templates
    if len(templates) > MAX_TEMPLATES_PER_CHANNEL:
        templates.clear()
    thread_oid = app.thread_oid
    frames: list[bytes] = []
    for message in window:
        first = message[0]
        key = (thread_oid, first.queue, first.time_limit_seconds, first.task_type, len(message))
        template = templates.get(key)
        if template is None:
            template = templates[key] = _MessageTemplate(channel, message)
        frames.append(template.frames(message))
        confirms.sent(message)
        if len(frames) == WRITE_BATCH:
            _write(channel, frames)
            frames = []
    if frames:
        _write(channel, frames)
    confirms.wait(CONFIRM_TIMEOUT_SECONDS)


def _message(
    channel: Any, *, ids: Sequence[tuple[str, str]], task_type: str, limit: int | None
) -> Any:
    """The AMQP message `execute.apply_async` (one (task_id, dispatch_id)) or
    `execute_batch.apply_async` (several) sends for them (a test compares the bytes)."""
    from apps.tasks.tasks import execute, execute_batch
    from taskflow.celery import app

    # Lists, as apply_async sends them (the stubs say tuple; the JSON is the same array).
    args: Any
    if len(ids) == 1:
        task, name, args = execute, EXECUTE_TASK_NAME, [*ids[0], task_type]
        # What Celery's saferepr gives for short strings, without its cost.
        argsrepr = repr(args)
    else:
        task, name = execute_batch, EXECUTE_BATCH_TASK_NAME
        args = [task_type, [list(pair) for pair in ids]]
        argsrepr = batch_argsrepr(task_type, len(ids))
    # Celery's task protocol 2, as `apply_async` builds it; the message id is the (first)
    # dispatch id.
    headers, properties, body, _ = app.amqp.as_task_v2(
        ids[0][1],
        name,
        args,
        {},
        reply_to=app.thread_oid,
        origin=anon_nodename(),
        argsrepr=argsrepr,
        kwargsrepr="{}",
        ignore_result=task.ignore_result,
        **_time_limits(limit, tasks=len(ids), task=task),
    )
    # What kombu's Producer.publish does with these arguments, without its per-call options
    # handling.
    content_type, content_encoding, data = dumps(body, serializer="json")
    return channel.prepare_message(
        data,
        None,  # priority: Celery's router passes None, so the message has none
        content_type,
        content_encoding,
        headers,
        {"delivery_mode": 2, **properties},
    )


def batch_argsrepr(task_type: str, tasks: int) -> str:
    """A batched message's `argsrepr` (what logs and monitors show of its arguments): Celery's
    own would be its ids cut at 1024 characters, one of them in two."""
    return f"[{task_type!r}, <{tasks} tasks>]"


class _FrameCapture:
    """Stands in for py-amqp's connection and transport to keep the frames it would write."""

    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.bytes_sent = 0
        self.written: list[bytes] = []

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))


class _MessageTemplate:
    """The frames of one message (basic.publish, content header, body), with its ids as holes:
    the messages of a kind differ only in their task and dispatch ids (36 characters each, so
    no length in a frame changes).

    Made once per kind of message (queue, time limit, task type, how many tasks) by py-amqp's
    own frame writer from the message `_message` builds; every message of the kind is then a
    substitution. Building each message with Celery and py-amqp was ~80 us (a third of a
    1000-task bulk request's Python time).
    """

    def __init__(self, channel: Any, sample: Message) -> None:
        ids = [(str(uuid.uuid4()), str(uuid.uuid4())) for _ in sample]
        message = _message(
            channel,
            ids=ids,
            task_type=sample[0].task_type,
            limit=sample[0].time_limit_seconds,
        )
        capture = _FrameCapture(channel.connection.frame_max)
        method_args = amqp_dumps("Bssbb", (0, "", sample[0].queue, False, False))
        frame_writer(capture, capture)(
            1, channel.channel_id, spec.Basic.Publish, method_args, message
        )
        frames = b"".join(capture.written)
        # The substitution keys of each (task_id, dispatch_id), in the message's order.
        self.keys = [(b"t%d" % number, b"d%d" % number) for number in range(len(ids))]
        holes = {}
        for pair, keys in zip(ids, self.keys, strict=True):
            for hole, key in zip(pair, keys, strict=True):
                holes[hole.encode()] = b"%(" + key + b")s"
        found = re.split(b"(" + b"|".join(holes) + b")", frames)
        # Every id of the message's headers, properties and body is a hole (none was cut in
        # two by a frame boundary).
        content = str(message.body).encode() + message._serialize_properties()
        if len(found) // 2 != sum(content.count(hole) for hole in holes):
            raise RuntimeError("A message's ids were not all found in its frames")
        self.format = b"".join(
            holes[part] if index % 2 else part.replace(b"%", b"%%")
            for index, part in enumerate(found)
        )

    def frames(self, message: Message) -> bytes:
        ids: dict[bytes, bytes] = {}
        for dispatch, (task_key, dispatch_key) in zip(message, self.keys, strict=True):
            ids[task_key] = str(dispatch.task_id).encode()
            ids[dispatch_key] = str(dispatch.dispatch_id).encode()
        return self.format % ids


def _write(channel: Any, frames: list[bytes]) -> None:
    """Write whole messages' frames on the channel's connection, as basic_publish would."""
    connection = channel.connection
    if connection is None or not channel.is_open:
        raise RecoverableConnectionError("basic_publish: connection closed")
    connection.transport.write(b"".join(frames))
    connection.bytes_sent += len(frames)


def _time_limits(limit: int | None, *, tasks: int, task: Any) -> dict[str, Any]:
    """The time limits a message carries: the type's own `limit` (times the `tasks` of a batch,
    which run one after another), or those `task` has (the defaults)."""
    if limit:
        return {
            "soft_time_limit": limit * tasks + SOFT_LIMIT_MARGIN_SECONDS,
            "time_limit": limit * tasks + HARD_LIMIT_MARGIN_SECONDS,
        }
    return {"soft_time_limit": task.soft_time_limit, "time_limit": task.time_limit}


def batch_task_time_limit(soft_time_limit: float | None, *, tasks: int) -> float | None:
    """The type's limit a batched message of `tasks` tasks was published with, from the soft
    limit the message carries (`_time_limits` backwards): what each of its tasks gets as its own
    (apps.tasks.execution). None if the message carries no soft limit."""
    if not soft_time_limit or tasks < 1:
        return None
    limit = (soft_time_limit - SOFT_LIMIT_MARGIN_SECONDS) / tasks
    return limit if limit > 0 else None


def publish(dispatches: Sequence[Dispatch]) -> list[Dispatch]:
    """Publish the dispatches; return those the broker confirmed.

    A connection that fails (a pooled one gone stale after a broker restart, say) is dropped and
    what it left unconfirmed is sent once more on a new one; after that it is left to the
    releaser. A message sent on the failed connection may have reached its queue all the same, so
    its tasks get a new dispatch_id before they are sent again (`transitions.redispatch`): never
    two copies of one dispatch, so that a redelivered copy is never taken for a lost attempt.
    """
    confirmed: list[Dispatch] = []
    todo = messages_for(dispatches)
    for attempt in (1, 2):
        conn = pools.connections[_connection()].acquire(block=True)
        confirms: _ConfirmChannel | None = None
        try:
            # Fail fast when the broker is away: the releaser publishes the task again later.
            conn.ensure_connection(max_retries=1, interval_start=0.1, interval_step=0.2)
            confirms = _confirm_channel(conn)
            while todo:
                _send_window(conn, confirms, todo[:CONFIRM_WINDOW])
                del todo[:CONFIRM_WINDOW]
                done, refused = confirms.take_results()
                confirmed.extend(done)
                if refused:
                    logger.warning(
                        "The broker refused %d message(s) (will publish again)", len(refused)
                    )
            return confirmed
        except Exception as exc:
            in_doubt: list[Message] = []
            if confirms is not None:
                done, _ = confirms.take_results()  # some of the window may have been confirmed
                confirmed.extend(done)
                # Sent and not settled: in the queue or not, nobody can tell.
                in_doubt = list(confirms.pending.values())
                settled_or_sent = {id(d) for d in done} | {id(m[0]) for m in in_doubt}
                todo = [m for m in todo if id(m[0]) not in settled_or_sent]
            _confirm_channels.pop(conn, None)
            conn.collect()  # drop the broken connection: the pool opens a new one
            known = isinstance(exc, (*conn.connection_errors, *conn.channel_errors, OSError))
            logger.log(
                logging.INFO if attempt == 1 else logging.WARNING,
                "Could not publish %d task(s)%s: %r",
                sum(len(message) for message in [*in_doubt, *todo]),
                " (trying a new connection)" if attempt == 1 else " (will publish again)",
                exc,
                exc_info=not known,
            )
        finally:
            conn.release()
        if attempt == 1 and in_doubt:
            todo = _with_new_dispatches(in_doubt) + todo
    return confirmed


def _with_new_dispatches(messages: Sequence[Message]) -> list[Message]:
    """The messages' tasks that are still queued on these dispatches, each with a new
    dispatch_id, in messages as they were; none if the database does not answer (the releaser
    publishes them again later: their published_at stays unset)."""
    dispatches = [dispatch for message in messages for dispatch in message]
    try:
        renewed = redispatch(
            "pairs",
            [str(d.task_id) for d in dispatches],
            [str(d.dispatch_id) for d in dispatches],
            limit=len(dispatches),
        )
    except DatabaseError as exc:
        logger.warning("Could not give %d task(s) a new dispatch: %r", len(dispatches), exc)
        return []
    new_ids = {str(task.id): str(task.dispatch_id) for task in renewed}
    again = [
        tuple(
            replace(d, dispatch_id=new_ids[str(d.task_id)])
            for d in message
            if str(d.task_id) in new_ids
        )
        for message in messages
    ]
    return [message for message in again if message]


# --- published_at --------------------------------------------------------------------------------


def _mark_published(dispatches: Sequence[Dispatch]) -> None:
    """One UPDATE for the lot. Only a still-queued task needs it (both republish sweeps look at
    queued tasks only, and every way back to queued clears published_at with a new dispatch_id)."""
    if dispatches:
        # The ids as two strings, not the ORM's `id__in` of 1000 parameters each (nor lists,
        # which Django's client-side binding quotes element by element): building that query
        # was ~12 ms of Python per 1000 tasks, in a thread of the web process that takes the
        # GIL from the requests.
        with connection.cursor() as cursor:
            cursor.execute(
                _MARK_PUBLISHED_SQL,
                [
                    timezone.now(),
                    TaskStatus.QUEUED.value,
                    ",".join([str(d.task_id) for d in dispatches]),
                    ",".join([str(d.dispatch_id) for d in dispatches]),
                ],
            )


# The rows are locked in id order first, as every multi-row change of tasks does (a batch's
# claim: apps.tasks.transitions.Rows): two statements locking rows in different orders deadlock.
_MARK_PUBLISHED_SQL = (
    f"UPDATE {Task._meta.db_table} t SET published_at = %s FROM ("  # noqa: S608 (a table name)
    f"SELECT id FROM {Task._meta.db_table} WHERE status = %s AND (id, dispatch_id) IN "
    "(SELECT * FROM unnest(string_to_array(%s, ',')::uuid[], string_to_array(%s, ',')::uuid[]))"
    " ORDER BY id FOR UPDATE) locked WHERE t.id = locked.id"
)


class _OffRequestThread:
    """Dispatches handed to a thread of the process, which handles what has gathered each time it
    wakes; `flush()` handles it in the caller's thread. Off until `start()` (gunicorn workers call
    it: taskflow/gunicorn.conf.py); while off, `add()` handles the dispatches at once."""

    THREAD_NAME = ""
    # Logged (with the traceback) when handling a batch fails; the batch is not retried here.
    FAILURE_MESSAGE = ""
    # After a wake, the thread waits this long for company before it handles what it has.
    INTERVAL_SECONDS = 0.0
    # The thread closes its database connection after this long without work.
    IDLE_CLOSE_SECONDS = 5.0

    def __init__(self) -> None:
        self.enabled = False
        self._pending: list[Dispatch] = []
        self._lock = threading.Lock()  # guards _pending
        self._flushing = threading.Lock()  # one flush at a time, so flush() waits for the thread's
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None

    def _handle(self, dispatches: list[Dispatch]) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.enabled = True

    def stop(self) -> None:
        """Handle in the caller's thread again; the thread ends, and what it held is handled now."""
        self.enabled = False
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self.flush()

    def add(self, dispatches: Sequence[Dispatch]) -> None:
        if not self.enabled:
            self._handle(list(dispatches))
            return
        with self._lock:
            self._pending.extend(dispatches)
            if self._thread_pid != os.getpid():  # none yet in this process (or forked away)
                self._thread_pid = os.getpid()
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name=self.THREAD_NAME, daemon=True
                )
                self._thread.start()
        self._wake.set()

    def flush(self) -> int:
        """Handle what is pending now, in the caller's thread. Returns how many were pending."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
            if batch:
                self._handle(batch)
        return len(batch)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._wake.wait(timeout=self.IDLE_CLOSE_SECONDS):
                    connection.close()  # idle: hold no database connection
                    continue
                self._wake.clear()
                if self.INTERVAL_SECONDS:
                    self._stopping.wait(self.INTERVAL_SECONDS)  # let more come
                try:
                    self.flush()
                except Exception:
                    # Unmarked either way: at worst republish_unconfirmed sends a message again.
                    logger.exception(self.FAILURE_MESSAGE)
                    close_old_connections()
        finally:
            connection.close()
            self._thread_pid = None


class PublishedMarks(_OffRequestThread):
    """`published_at` of confirmed dispatches, written off the request path by a thread.

    The request then commits once (its task), not twice. What the thread has not written yet
    (or never writes, if the process dies first) only makes `republish_unconfirmed` send the
    task's message again once `REPUBLISH_AFTER_SECONDS` have passed, if it is still queued
    (under a new dispatch_id: the claim drops the first copy). A dispatch the broker did not
    confirm is never marked. Elsewhere (workers, beat, tests, scripts) marking is synchronous.
    """

    THREAD_NAME = "published-marks"
    FAILURE_MESSAGE = "Could not record published_at of confirmed tasks"
    # Marks wait this long for company, so a busy process writes them in a few UPDATEs a second.
    INTERVAL_SECONDS = 0.1

    def _handle(self, dispatches: list[Dispatch]) -> None:
        _mark_published(dispatches)


marks = PublishedMarks()


class RequestPublishing(_OffRequestThread):
    """The messages of the requests' creates, published by a thread of the web process, so that a
    request answers once its transaction committed instead of waiting for the broker's confirm.

    What several requests committed while the thread was busy goes out in one publish: one wait
    for the confirms, and the tasks of a type that runs in batches share `execute_batch` messages
    (W12), as a bulk create's do. Nothing is promised that a commit does not already give: the
    task and its history row are in PostgreSQL before the 201, and a dispatch the broker did not
    confirm (the broker away, this process killed before the thread published) is published again
    by `republish_unconfirmed` after `REPUBLISH_AFTER_SECONDS`, as it was when the request itself
    published and the broker was away. gunicorn's `worker_exit` publishes what is left when a
    worker stops; elsewhere a create publishes in its own thread after commit.
    """

    THREAD_NAME = "request-publishing"
    FAILURE_MESSAGE = "Could not publish the requests' tasks (they are published again later)"

    def _handle(self, dispatches: list[Dispatch]) -> None:
        publish_now(dispatches, mark_later=True)


request_publishing = RequestPublishing()


def publish_now(dispatches: Iterable[Dispatch], *, mark_later: bool = False) -> int:
    """Publish and mark what the broker confirmed. Returns how many were confirmed.

    `mark_later`: the request path's creates, whose marks `marks` may write off the request.
    """
    confirmed = publish(list(dispatches))
    if mark_later:
        marks.add(confirmed)
    else:
        _mark_published(confirmed)
    return len(confirmed)


def publish_on_commit(dispatches: list[Dispatch], *, from_request: bool = False) -> None:
    """Publish after the transaction commits. `from_request`: a create of the API, whose
    messages `request_publishing` sends when the process runs it (gunicorn), and whose marks
    `marks` may write off the request."""
    if not dispatches:
        return
    if from_request:
        transaction.on_commit(lambda: request_publishing.add(dispatches))
    else:
        transaction.on_commit(lambda: publish_now(dispatches))


def dispatch_for(task: Task) -> Dispatch:
    from apps.handlers.registry import get_task_type

    spec = get_task_type(task.type)
    assert task.dispatch_id is not None
    return Dispatch(
        task_id=task.id,
        dispatch_id=task.dispatch_id,
        queue=task.queue,
        time_limit_seconds=spec.time_limit_seconds if spec else None,
        task_type=task.type,
    )


@dataclass(frozen=True)
class DeadLetter:
    task_id: uuid.UUID | str
    dispatch_id: uuid.UUID | str | None
    reason: str


def publish_dead_letter(*, task_id: uuid.UUID, dispatch_id: uuid.UUID | None, reason: str) -> None:
    """Put a record in the dead-letter queue for a task that failed with no message to reject.

    (A running attempt whose lease expired: its message is gone or held by a stuck worker.)
    """
    publish_dead_letters([DeadLetter(task_id, dispatch_id, reason)])


def publish_dead_letters(records: Sequence[DeadLetter]) -> None:
    """Records in the dead-letter queue, each confirmed by the broker (else an error is raised):
    also for the tasks of a batched message that failed for good (the message, which carried
    others too, is not rejected)."""
    from taskflow.celery import app

    if not records:
        return
    with Connection(
        app.conf.broker_url, connect_timeout=3, transport_options={"confirm_publish": True}
    ) as conn:
        producer = Producer(conn.channel(), exchange=dead_letter_exchange)
        for record in records:
            producer.publish(
                {"task_id": str(record.task_id), "dispatch_id": str(record.dispatch_id or "")},
                routing_key=DEAD_LETTER_EXCHANGE_NAME,
                headers={"x-taskflow-reason": record.reason, "task": EXECUTE_TASK_NAME},
                declare=[dead_letter_exchange],
                serializer="json",
                delivery_mode=2,
            )
