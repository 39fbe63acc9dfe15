"""What was sent, so that a retried or redelivered task never sends it twice."""

from django.db import models


class SentEmail(models.Model):
    """Written right after the SMTP server accepted a task's message; checked before sending."""

    task = models.OneToOneField(
        "tasks.Task", on_delete=models.CASCADE, primary_key=True, related_name="sent_email"
    )
    message_id = models.CharField(max_length=255)
    recipients = models.JSONField(default=list)
    # Recipients the server refused while accepting others: {address: [code, reply]}.
    refused = models.JSONField(default=dict, blank=True)
    attempt = models.PositiveIntegerField()
    sent_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.message_id} to {len(self.recipients)} recipient(s)"
