"""`send_email` (seed 002): a message to one or more addresses, with the owner's files attached.

Sent through Django's SMTP backend (MAIL_* settings). Connection failures and 4xx replies retry;
5xx replies fail at once with the server's words. The task's SentEmail row (apps.notifications)
keeps a retried or redelivered task from sending twice.
"""

from typing import Any

from rest_framework import serializers

from apps.files.models import UserFile
from apps.files.services import file_summary
from apps.handlers.fields import RecipientsField, SingleLineField, TextField
from apps.notifications.services import Attachment, email_send
from taskflow.sdk import FileRefField, PermanentError, TaskContext, TaskQueue, handler

MAX_ATTACHMENTS = 10
MAX_ATTACHMENTS_BYTES = 20 * 1024 * 1024  # what most SMTP servers take, after base64
MAX_SUBJECT_LENGTH = 998  # RFC 5322's line limit


class SendEmailPayload(serializers.Serializer):
    """At least one of subject, body and attached_files must be non-empty (seed 002's rule)."""

    to = RecipientsField(max_recipients=50)
    subject = SingleLineField(
        required=False, allow_blank=True, default="", max_length=MAX_SUBJECT_LENGTH
    )
    body = TextField(required=False, allow_blank=True, default="", trim_whitespace=False)
    attached_files = serializers.ListField(
        child=FileRefField(),
        required=False,
        default=list,
        max_length=MAX_ATTACHMENTS,
        help_text=f"Ids of your files (/api/files), at most {MAX_ATTACHMENTS}.",
    )

    def validate_attached_files(self, value: list[str]) -> list[str]:
        total = sum(UserFile.objects.filter(id__in=value).values_list("size", flat=True))
        if total > MAX_ATTACHMENTS_BYTES:
            raise serializers.ValidationError(
                f"The attachments total {total} bytes; at most {MAX_ATTACHMENTS_BYTES}."
            )
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not (attrs["subject"].strip() or attrs["body"].strip() or attrs["attached_files"]):
            raise serializers.ValidationError(
                "Give at least one of subject, body or attached_files: all three are empty."
            )
        return attrs


@handler(
    "send_email",
    payload=SendEmailPayload,
    queue=TaskQueue.IO,
    time_limit_seconds=300,
    retry_on=(),
    description="Sends an email (to, subject, body, attached_files) through the SMTP server.",
)
def send_email(ctx: TaskContext, payload: dict[str, Any]) -> dict[str, Any]:
    files = [ctx.file(file_id) for file_id in payload["attached_files"]]
    if sum(f.size for f in files) > MAX_ATTACHMENTS_BYTES:
        raise PermanentError(f"The attachments total more than {MAX_ATTACHMENTS_BYTES} bytes.")

    def attachments() -> list[Attachment]:
        loaded = []
        for file in files:
            with ctx.open_file(str(file.id)) as handle:
                loaded.append(Attachment(file.name, handle.read(), file.content_type))
        return loaded

    ctx.raise_if_cancelled()
    result = email_send(
        task_id=ctx.task_id,
        attempt=ctx.attempt,
        to=payload["to"],
        subject=payload["subject"],
        body=payload["body"],
        attachments=attachments,
    )
    result["attached_files"] = [file_summary(f) for f in files]
    return result
