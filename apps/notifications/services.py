"""Sending a task's email exactly once, as far as SMTP allows.

Before sending we look for the task's SentEmail row; right after the server accepts the message we
write it. So a retried attempt, a redelivered message or a replayed task whose mail already went
out does not send it again. The one window left: the worker dies after the server said 250 to
DATA and before the row commits (milliseconds). Then the next attempt sends again; the copy carries
the same Message-ID (derived from the task id), which lets mail clients and many servers drop it.
"""

import logging
import smtplib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from email import encoders
from email.mime.base import MIMEBase
from email.utils import parseaddr
from typing import Any

from django.conf import settings

from apps.handlers.errors import HandlerError, PermanentError, RetryableError
from apps.notifications.models import SentEmail
from apps.notifications.smtp import RecordingSmtpBackend, reply_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attachment:
    name: str
    content: bytes
    content_type: str


def message_id_for(task_id: uuid.UUID | str) -> str:
    domain = parseaddr(settings.DEFAULT_FROM_EMAIL)[1].rpartition("@")[2] or "taskflow.local"
    return f"<task-{task_id}@{domain}>"


def _sent_result(marker: SentEmail, *, already_sent: bool) -> dict[str, Any]:
    return {
        "message_id": marker.message_id,
        "to": marker.recipients,
        "refused": marker.refused,
        "sent_at": marker.sent_at.isoformat(),
        "already_sent": already_sent,
    }


def email_send(
    *,
    task_id: uuid.UUID | str,
    attempt: int,
    to: list[str],
    subject: str,
    body: str,
    attachments: Callable[[], list[Attachment]] = list,
) -> dict[str, Any]:
    """Send the task's message through the configured SMTP server, unless it already went out.

    Raises RetryableError for what may pass (connection refused, timeouts, 4xx replies) and
    PermanentError for what will not (5xx replies: a refused recipient, a rejected message).
    """
    marker = SentEmail.objects.filter(task_id=task_id).first()
    if marker is not None:
        logger.info("Task %s: email already sent (%s); not again", task_id, marker.message_id)
        return _sent_result(marker, already_sent=True)

    from django.core.mail import EmailMessage

    message_id = message_id_for(task_id)
    message = EmailMessage(
        subject=subject,
        body=body,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=to,
        headers={"Message-ID": message_id},
    )
    for attachment in attachments():  # read only when the message is really to be sent
        message.attach(_mime_part(attachment))

    backend = RecordingSmtpBackend(fail_silently=False)
    try:
        backend.send_messages([message])
    except Exception as exc:
        if not backend.accepted:
            raise _as_handler_error(exc) from exc
        # The server took the message; only the goodbye failed. It is sent.
        logger.warning("Task %s: SMTP error after the message was accepted: %s", task_id, exc)

    marker = SentEmail.objects.create(
        task_id=task_id,
        message_id=message_id,
        recipients=to,
        refused={address: [code, reply] for address, (code, reply) in backend.refused.items()},
        attempt=attempt,
    )
    return _sent_result(marker, already_sent=False)


def _mime_part(attachment: Attachment) -> MIMEBase:
    """Base64, whatever the type: the recipient gets the file's exact bytes (Django would turn a
    text/* file into text, with its line endings rewritten)."""
    maintype, _, subtype = attachment.content_type.partition(";")[0].strip().partition("/")
    if not (maintype and subtype):
        maintype, subtype = "application", "octet-stream"
    part = MIMEBase(maintype, subtype)
    part.set_payload(attachment.content)
    encoders.encode_base64(part)
    filename: str | tuple[str, str, str] = attachment.name
    if not attachment.name.isascii():
        filename = ("utf-8", "", attachment.name)
    part.add_header("Content-Disposition", "attachment", filename=filename)
    return part


def _server() -> str:
    return f"{settings.EMAIL_HOST}:{settings.EMAIL_PORT}"


def _is_transient(code: int) -> bool:
    return not 500 <= code < 600  # 4xx, or no code at all (-1: the connection broke)


def _as_handler_error(exc: Exception) -> HandlerError:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        replies = "; ".join(
            f"{address}: {reply_text(code, reply)}"
            for address, (code, reply) in exc.recipients.items()
        )
        if any(_is_transient(code) for code, _ in exc.recipients.values()):
            return RetryableError(f"The SMTP server refused the recipients for now: {replies}")
        return PermanentError(f"The SMTP server refused every recipient: {replies}")
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = reply_text(exc.smtp_code, exc.smtp_error)
        if _is_transient(exc.smtp_code):
            return RetryableError(f"The SMTP server {_server()} answered {reply}")
        return PermanentError(f"The SMTP server {_server()} refused the message: {reply}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return RetryableError(f"The SMTP server {_server()} closed the connection: {exc}")
    if isinstance(exc, smtplib.SMTPException):
        # STARTTLS or AUTH not offered, and the like: the configuration, not the moment.
        return PermanentError(f"SMTP server {_server()}: {exc}")
    if isinstance(exc, OSError):  # refused, unreachable, timed out (SMTPException is one too)
        return RetryableError(f"Could not reach the SMTP server {_server()}: {exc}")
    return RetryableError(f"{type(exc).__name__}: {exc}")
