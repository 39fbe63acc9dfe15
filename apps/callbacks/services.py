"""Completion callbacks: the URL's check at create, the signing secret, the dispatch of due rows
and the delivery of one (docs/api.md, "Callbacks"; docs/architecture.md).

Delivery is at least once: a row is leased (its next_attempt_at pushed ahead) while its POST is in
flight, and a worker that dies mid-POST leaves it to be sent again when the lease ends. Receivers
dedupe on X-TaskFlow-Delivery.
"""

import functools
import hashlib
import hmac
import json
import logging
import time
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from apps.callbacks.models import TaskCallback
from apps.core.exceptions import ApplicationError
from apps.handlers import net
from apps.handlers.errors import PermanentError, RetryableError
from apps.handlers.signing import SIGNATURE_HEADER, sign
from apps.tasks.backoff import retry_delay
from apps.tasks.models import Task

logger = logging.getLogger(__name__)

MAX_URL_LENGTH = 2000
EVENT_HEADER = "X-TaskFlow-Event"
DELIVERY_HEADER = "X-TaskFlow-Delivery"
ERROR_EXCERPT_CHARS = 300
# How long a dispatched row is not dispatched again: past the delivery task's hard time limit,
# so that a second POST of one row starts only once the first is surely over (or lost).
LEASE_SECONDS = 120
DISPATCH_BATCH = 500


# --- The URL, at create --------------------------------------------------------------------------


def _url_error(message: str) -> ApplicationError:
    return ApplicationError(
        f"Invalid callback_url: {message}",
        code="validation_error",
        fields={"callback_url": [message]},
    )


def check_callback_url(url: Any) -> str:
    """The URL a task may be created with, or a field-level 400.

    Only what can be known now: http(s), a host, no credentials, and not a literal address the
    SSRF guard refuses. A name is resolved (and refused if private) at each delivery, since what
    it resolves to may change."""
    if not isinstance(url, str):
        raise _url_error("Must be a URL (a string).")
    if len(url) > MAX_URL_LENGTH:
        raise _url_error(f"At most {MAX_URL_LENGTH} characters.")
    try:
        parsed = net.parse_url(url)
    except net.InvalidUrl as exc:
        raise _url_error(str(exc.args[0]) if exc.args else "Not a valid URL.") from None
    if parsed.userinfo:
        raise _url_error("Must not hold credentials (user:password@).")
    literal = net.literal_address(parsed.host)
    if literal is not None and not net.address_allowed(literal):
        raise _url_error("Must not point to a private, loopback or link-local address.")
    return url


# --- The signing secret --------------------------------------------------------------------------


def _signing_key() -> bytes:
    configured = settings.CALLBACK_SIGNING_KEY
    if configured:
        return configured.encode()
    # Derived, not SECRET_KEY itself: a secret handed to users must not be usable as another key.
    return hmac.new(settings.SECRET_KEY.encode(), b"taskflow.callbacks", hashlib.sha256).digest()


def user_signing_secret(user_id: int) -> str:
    """The secret a user's callbacks are signed with: HMAC(CALLBACK_SIGNING_KEY, user id)."""
    return hmac.new(_signing_key(), str(user_id).encode(), hashlib.sha256).hexdigest()


# --- Dispatch: due rows to the io workers ------------------------------------------------------


def _claim_due(limit: int) -> list[tuple[int, str]]:
    """Lease up to `limit` due rows (SKIP LOCKED: two dispatchers at once take different rows):
    (id, the lease's end), which the deliver message carries as its claim to the row."""
    table = TaskCallback._meta.db_table
    sql = (
        f"UPDATE {table} c SET next_attempt_at = statement_timestamp() + make_interval(secs => %s) "  # noqa: S608 (names only)
        f"FROM (SELECT id FROM {table} WHERE delivered_at IS NULL AND failed_at IS NULL "
        "AND next_attempt_at <= statement_timestamp() ORDER BY next_attempt_at LIMIT %s "
        "FOR UPDATE SKIP LOCKED) due WHERE c.id = due.id RETURNING c.id, c.next_attempt_at"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, [LEASE_SECONDS, limit])
        return [(row[0], row[1].isoformat()) for row in cursor.fetchall()]


def dispatch_due_callbacks(*, batch_size: int = DISPATCH_BATCH, max_batches: int = 20) -> int:
    """Lease the due rows and send a callbacks.deliver message for each, after the lease commits
    (a message for a lease that rolled back would POST a row still due). A publish that fails
    loses nothing: the lease runs out and the row is dispatched again."""
    from apps.callbacks.tasks import deliver

    sent = 0
    for _ in range(max_batches):
        with transaction.atomic():
            ids = _claim_due(batch_size)
            if ids:
                transaction.on_commit(functools.partial(_publish, deliver, ids))
        sent += len(ids)
        if len(ids) < batch_size:
            break
    return sent


def _publish(task: Any, leases: list[tuple[int, str]]) -> None:
    for callback_id, lease in leases:
        try:
            task.apply_async(args=[callback_id, lease])
        except Exception:  # the broker is away: the lease runs out, the row is sent again
            logger.exception("could not publish callbacks.deliver for %s", callback_id)
            return


# --- Delivery: one POST ------------------------------------------------------------------------


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def callback_body(callback: TaskCallback, task: Task) -> bytes:
    document = {
        "event": callback.event,
        "task": {
            "id": str(task.id),
            "type": task.type,
            "status": task.status,
            "result": task.result,
            "error": task.error,
            "attempts": task.attempts,
            "created_at": _iso(task.created_at),
            "finished_at": _iso(task.finished_at),
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _post(callback: TaskCallback, task: Task) -> tuple[int | None, str]:
    """POST the callback: (the status code or None, an error or "" if it was a 2xx)."""
    body = callback_body(callback, task)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(user_signing_secret(task.owner_id), body),
        EVENT_HEADER: callback.event,
        DELIVERY_HEADER: str(callback.id),
    }
    timeout = settings.CALLBACK_TIMEOUT_SECONDS
    try:
        with net.guarded_request(
            "POST", callback.url, headers=headers, content=body, timeout=timeout, max_redirects=0
        ) as guarded:
            code = guarded.response.status_code
            if 200 <= code < 300:
                return code, ""
            excerpt = _excerpt(guarded, timeout)
            return code, f"answered {code} {guarded.response.reason_phrase}{excerpt}".strip()
    except net.TooManyRedirects:
        return None, "answered with a redirect; redirects are not followed"
    except (PermanentError, RetryableError) as exc:  # SSRF refusal, DNS, network
        return None, str(exc)


def _excerpt(guarded: net.GuardedResponse, timeout: float) -> str:
    """The start of an error answer's body; nothing more of it is read or kept."""
    head = bytearray()
    try:
        for chunk in net.read_body(guarded, max_bytes=2**62, deadline=time.monotonic() + timeout):
            head.extend(chunk)
            if len(head) >= ERROR_EXCERPT_CHARS:
                break
    except (PermanentError, RetryableError):
        pass  # the status is what matters
    text = bytes(head[:ERROR_EXCERPT_CHARS]).decode("utf-8", errors="replace").strip()
    return f": {text}" if text else ""


def _take_lease(callback_id: int, lease: str) -> bool:
    """The message's claim to the row: only while the row still has the lease it was dispatched
    with (not settled, not re-leased by a later dispatch, not claimed by another message). The
    lease then restarts from now, for the POST: a message that waited in the queue past its
    lease (and so was dispatched again), or a second copy of one (redelivered after a worker
    died), finds another lease and skips, instead of POSTing again at once, past the backoff."""
    table = TaskCallback._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_attempt_at = "  # noqa: S608 (names only)
            "statement_timestamp() + make_interval(secs => %s) "
            "WHERE id = %s AND delivered_at IS NULL AND failed_at IS NULL "
            "AND next_attempt_at = %s::timestamptz",
            [LEASE_SECONDS, callback_id, lease],
        )
        return cursor.rowcount == 1


def deliver_callback(callback_id: int, lease: str | None = None) -> str:
    """POST one callback and record the outcome: "delivered", "retrying", "failed", "superseded"
    (the task was retried since: not sent), or "skipped" (already settled, gone with its task,
    or its `lease` taken by another message). No lock is held during the POST."""
    if lease is not None and not _take_lease(callback_id, lease):
        return "skipped"
    callback = TaskCallback.objects.select_related("task").filter(id=callback_id).first()
    if callback is None or callback.delivered_at or callback.failed_at:
        return "skipped"
    if callback.task.status != callback.status:
        # Retried by hand since it ended: that ending was undone, and the body (the task as it
        # is now) would contradict the event. The next ending sends a callback of its own.
        return _supersede(callback)
    try:
        code, error = _post(callback, callback.task)
    except SoftTimeLimitExceeded:
        # A receiver that trickles its answer past the task's limit: counted as a failed POST,
        # else the row would be dispatched again and again without its attempts growing.
        code, error = None, "took longer than the delivery's time limit"
    return _record(callback, code, error)


def _supersede(callback: TaskCallback) -> str:
    TaskCallback.objects.filter(
        id=callback.id, delivered_at__isnull=True, failed_at__isnull=True
    ).update(
        failed_at=timezone.now(),
        last_error=f"superseded: the task was retried since it ended and is {callback.task.status} "
        "now; its next ending sends a callback of its own",
    )
    return "superseded"


def _record(callback: TaskCallback, code: int | None, error: str) -> str:
    now = timezone.now()
    attempts = callback.attempts + 1
    changes: dict[str, Any] = {"attempts": attempts, "last_status_code": code}
    if not error:
        outcome = "delivered"
        changes |= {"delivered_at": now, "last_error": ""}
    elif attempts >= settings.CALLBACK_MAX_ATTEMPTS:
        outcome = "failed"
        changes |= {"failed_at": now, "last_error": error[:2000]}
    else:
        outcome = "retrying"
        wait = retry_delay(
            attempts,
            base=settings.CALLBACK_BACKOFF_BASE_SECONDS,
            cap=settings.CALLBACK_BACKOFF_CAP_SECONDS,
        )
        changes |= {"next_attempt_at": now + wait, "last_error": error[:2000]}
    # Conditional: a row settled meanwhile (sent again by the admin, or a second POST after a
    # lease ran out) keeps what it has.
    TaskCallback.objects.filter(
        id=callback.id, delivered_at__isnull=True, failed_at__isnull=True
    ).update(**changes)
    if outcome != "delivered":
        logger.info("callback %s to %s: %s (%s)", callback.id, callback.url, outcome, error)
    return outcome


def callbacks_send_again(*, ids: list[int]) -> int:
    """Owe these callbacks again, now, with a full set of attempts (the admin's action)."""
    return TaskCallback.objects.filter(id__in=ids).update(
        delivered_at=None,
        failed_at=None,
        attempts=0,
        last_error="",
        last_status_code=None,
        next_attempt_at=timezone.now(),
    )
