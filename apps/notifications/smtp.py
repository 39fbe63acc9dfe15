"""Django's SMTP backend, keeping what the server said about each recipient."""

from typing import Any

from django.conf import settings
from django.core.mail import EmailMessage
from django.core.mail.backends.smtp import EmailBackend
from django.core.mail.message import sanitize_address


class RecordingSmtpBackend(EmailBackend):
    """As Django's, but a recipient refused while others were accepted is recorded rather than
    silently ignored (smtplib returns them; Django drops the return value)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refused: dict[str, tuple[int, str]] = {}
        # True once the server accepted a message (250 after DATA).
        self.accepted = False

    def _send(self, email_message: EmailMessage) -> bool:
        if not email_message.recipients():
            return False
        encoding = email_message.encoding or settings.DEFAULT_CHARSET
        from_email = sanitize_address(email_message.from_email, encoding)
        recipients = [sanitize_address(addr, encoding) for addr in email_message.recipients()]
        message = email_message.message()
        assert self.connection is not None
        raw: bytes = message.as_bytes(linesep="\r\n")  # type: ignore[call-arg]
        refused = self.connection.sendmail(from_email, recipients, raw)
        self.accepted = True
        self.refused = {
            address: (code, reply.decode(errors="replace") if isinstance(reply, bytes) else reply)
            for address, (code, reply) in refused.items()
        }
        return True


def reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {text}".strip()
