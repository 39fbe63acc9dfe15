"""Publishing execution messages, always after the task row has committed.

The database row is the truth; a message is only a nudge. A task whose message did not reach the
broker stays `queued` with `published_at` unset, and the releaser publishes it again.

Messages go out in batches on one channel in confirm mode: every message of a batch is written
first, then the broker's confirms (`basic.ack`, often one for many with `multiple`) are awaited
together, so a batch of 1000 costs one wait for RabbitMQ's disk instead of 1000. Only the
dispatches the broker acked get `published_at`; a nack, a timeout or a lost connection leaves the
rest unset, for `services.republish_unconfirmed`.
"""

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

from celery.utils.nodenames import anon_nodename
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from kombu import Connection, Producer, pools
from kombu.common import maybe_declare
from kombu.serialization import dumps

from apps.tasks.models import Task
from apps.tasks.queues import DEAD_LETTER_EXCHANGE_NAME, dead_letter_exchange
from apps.tasks.states import TaskStatus

logger = logging.getLogger(__name__)

EXECUTE_TASK_NAME = "tasks.execute"
# Give the handler's own limit a margin before Celery's soft limit fires, and a second margin
# before the hard kill.
SOFT_LIMIT_MARGIN_SECONDS = 5
HARD_LIMIT_MARGIN_SECONDS = 30
# At most this many messages in flight before their confirms are awaited.
CONFIRM_WINDOW = 1000
# How long to wait for a window's confirms before giving up on the unconfirmed ones (they stay
# unmarked, and the releaser publishes them again).
CONFIRM_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Dispatch:
    task_id: uuid.UUID
    dispatch_id: uuid.UUID
    queue: str
    time_limit_seconds: int | None = None
    # Carried in the message so that the worker can admit and claim without reading the row first.
    task_type: str = ""


# --- the broker side -----------------------------------------------------------------------------


def _connection() -> Connection:
    """The publishers' connection (the pool's key): the app's broker, without `confirm_publish`.

    py-amqp's `confirm_publish` transport option makes every `basic_publish` wait for its own
    confirm. These connections leave it off; `_ConfirmChannel` selects confirm mode itself.
    """
    from taskflow.celery import app

    return app.connection_for_write(transport_options={"confirm_publish": False})


class _ConfirmChannel:
    """One channel in confirm mode, and the delivery tags (1, 2, ...) it has handed out."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.last_tag = 0
        self.pending: dict[int, Dispatch] = {}
        self.lowest = 1  # no tag below this is pending
        self.confirmed: list[Dispatch] = []
        self.nacked: list[Dispatch] = []
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.confirm_select()

    def _settle(self, tag: int, multiple: bool, into: list[Dispatch]) -> None:
        if multiple:  # every tag up to this one
            for each in range(self.lowest, tag + 1):
                dispatch = self.pending.pop(each, None)
                if dispatch is not None:
                    into.append(dispatch)
            self.lowest = max(self.lowest, tag + 1)
        elif (dispatch := self.pending.pop(tag, None)) is not None:
            into.append(dispatch)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self.confirmed)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, self.nacked)

    def sent(self, dispatch: Dispatch) -> None:
        self.last_tag += 1
        self.pending[self.last_tag] = dispatch

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


def _message_options(dispatch: Dispatch, execute: Any) -> dict[str, Any]:
    """What `execute.apply_async(...)` would put in the message: its time limits."""
    if dispatch.time_limit_seconds:
        return {
            "soft_time_limit": dispatch.time_limit_seconds + SOFT_LIMIT_MARGIN_SECONDS,
            "time_limit": dispatch.time_limit_seconds + HARD_LIMIT_MARGIN_SECONDS,
        }
    return {"soft_time_limit": execute.soft_time_limit, "time_limit": execute.time_limit}


def _send_window(conn: Connection, confirms: _ConfirmChannel, window: Sequence[Dispatch]) -> None:
    """Publish `window` on the confirm channel and wait until the broker settled every message."""
    from apps.tasks.tasks import execute
    from taskflow.celery import app

    channel = confirms.channel
    queues = app.amqp.queues
    for name in {d.queue for d in window}:
        # As Celery's send_task_message does: the queue exists, with its arguments (dead letters).
        maybe_declare(queues[name], channel)
    origin = anon_nodename()
    reply_to = app.thread_oid
    build = app.amqp.as_task_v2
    for dispatch in window:
        dispatch_id = str(dispatch.dispatch_id)
        # A list, as apply_async sends it (the stubs say tuple; the JSON is the same array).
        args: Any = [str(dispatch.task_id), dispatch_id, dispatch.task_type]
        # Celery's task protocol 2, as `execute.apply_async` builds it (a test compares the two).
        headers, properties, body, _ = build(
            dispatch_id,
            EXECUTE_TASK_NAME,
            args,
            {},
            reply_to=reply_to,
            origin=origin,
            # What Celery's saferepr gives for three short strings, without its cost (a third
            # of building a message).
            argsrepr=repr(args),
            kwargsrepr="{}",
            ignore_result=execute.ignore_result,
            **_time_limits(dispatch, execute),
        )
        # What kombu's Producer.publish does with these arguments, without its per-call options
        # handling (a sixth of a bulk request's publishing).
        content_type, content_encoding, data = dumps(body, serializer="json")
        message = channel.prepare_message(
            data,
            None,  # priority: Celery's router passes None, so the message has none
            content_type,
            content_encoding,
            headers,
            {"delivery_mode": 2, **properties},
        )
        # The default exchange, routing key = queue name, as Celery sends it.
        channel.basic_publish(message, exchange="", routing_key=dispatch.queue)
        confirms.sent(dispatch)
    confirms.wait(CONFIRM_TIMEOUT_SECONDS)


def _time_limits(dispatch: Dispatch, execute: Any) -> dict[str, Any]:
    """The time limits `execute.apply_async` puts in a message: the type's own, or the defaults."""
    if dispatch.time_limit_seconds:
        return {
            "soft_time_limit": dispatch.time_limit_seconds + SOFT_LIMIT_MARGIN_SECONDS,
            "time_limit": dispatch.time_limit_seconds + HARD_LIMIT_MARGIN_SECONDS,
        }
    return {"soft_time_limit": execute.soft_time_limit, "time_limit": execute.time_limit}


def publish(dispatches: Sequence[Dispatch]) -> list[Dispatch]:
    """Publish the dispatches; return those the broker confirmed.

    A connection that fails (a pooled one gone stale after a broker restart, say) is dropped and
    what it left unconfirmed is sent once more on a new one; after that it is left to the
    releaser. A message may then exist twice: the claim's dispatch_id check makes the copy harmless.
    """
    confirmed: list[Dispatch] = []
    todo = list(dispatches)
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
            if confirms is not None:
                done, _ = confirms.take_results()  # some of the window may have been confirmed
                confirmed.extend(done)
                acked = {id(d) for d in done}
                todo = [d for d in todo if id(d) not in acked]
            _confirm_channels.pop(conn, None)
            conn.collect()  # drop the broken connection: the pool opens a new one
            known = isinstance(exc, (*conn.connection_errors, *conn.channel_errors, OSError))
            logger.log(
                logging.INFO if attempt == 1 else logging.WARNING,
                "Could not publish %d task(s)%s: %r",
                len(todo),
                " (trying a new connection)" if attempt == 1 else " (will publish again)",
                exc,
                exc_info=not known,
            )
        finally:
            conn.release()
    return confirmed


# --- published_at --------------------------------------------------------------------------------


def _mark_published(dispatches: Sequence[Dispatch]) -> None:
    """One UPDATE for the lot. Only a still-queued task needs it (both republish sweeps look at
    queued tasks only, and every way back to queued clears published_at with a new dispatch_id)."""
    if dispatches:
        Task.objects.filter(
            status=TaskStatus.QUEUED,
            id__in=[d.task_id for d in dispatches],
            dispatch_id__in=[d.dispatch_id for d in dispatches],
        ).update(published_at=timezone.now())


class PublishedMarks:
    """`published_at` of confirmed dispatches, written off the request path by a thread.

    The request then commits once (its task), not twice. What the thread has not written yet
    (or never writes, if the process dies first) only makes `republish_unconfirmed` send a
    second copy of a message once `REPUBLISH_AFTER_SECONDS` have passed, if the task is still
    queued: harmless, the claim drops the copy. A dispatch the broker did not confirm is never
    marked. Off until `start()` (gunicorn workers call it: taskflow/gunicorn.conf.py): elsewhere
    (workers, beat, tests, scripts) marking is synchronous.
    """

    # Marks wait this long for company, so a busy process writes them in a few UPDATEs a second.
    INTERVAL_SECONDS = 0.1
    # The thread closes its database connection after this long without marks.
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

    def start(self) -> None:
        self.enabled = True

    def stop(self) -> None:
        """Mark synchronously again; the thread ends, and what it held is written now."""
        self.enabled = False
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._thread = None
        self.flush()

    def add(self, dispatches: Sequence[Dispatch]) -> None:
        if not self.enabled:
            _mark_published(dispatches)
            return
        with self._lock:
            self._pending.extend(dispatches)
            if self._thread_pid != os.getpid():  # none yet in this process (or forked away)
                self._thread_pid = os.getpid()
                self._stopping.clear()
                self._thread = threading.Thread(
                    target=self._run, name="published-marks", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def flush(self) -> int:
        """Write what is pending now, in the caller's thread. Returns how many were pending."""
        with self._flushing:
            with self._lock:
                batch, self._pending = self._pending, []
            _mark_published(batch)
        return len(batch)

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._wake.wait(timeout=self.IDLE_CLOSE_SECONDS):
                    connection.close()  # idle: hold no database connection
                    continue
                self._wake.clear()
                self._stopping.wait(self.INTERVAL_SECONDS)  # let more marks come
                try:
                    self.flush()
                except Exception:
                    # Those tasks stay unmarked: at worst a second copy of their message, later.
                    logger.exception("Could not record published_at of confirmed tasks")
                    close_old_connections()
        finally:
            connection.close()
            self._thread_pid = None


marks = PublishedMarks()


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


def publish_on_commit(dispatches: list[Dispatch], *, mark_later: bool = False) -> None:
    if dispatches:
        transaction.on_commit(lambda: publish_now(dispatches, mark_later=mark_later))


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


def publish_dead_letter(*, task_id: uuid.UUID, dispatch_id: uuid.UUID | None, reason: str) -> None:
    """Put a record in the dead-letter queue for a task that failed with no message to reject.

    (A running attempt whose lease expired: its message is gone or held by a stuck worker.)
    """
    from taskflow.celery import app

    with Connection(app.conf.broker_url, connect_timeout=3) as conn:
        producer = Producer(conn.channel(), exchange=dead_letter_exchange)
        producer.publish(
            {"task_id": str(task_id), "dispatch_id": str(dispatch_id or "")},
            routing_key=DEAD_LETTER_EXCHANGE_NAME,
            headers={"x-taskflow-reason": reason, "task": EXECUTE_TASK_NAME},
            declare=[dead_letter_exchange],
            serializer="json",
            delivery_mode=2,
        )
