"""The outbox of completion callbacks: one row per POST owed to a task's callback_url.

The row is written by the terminal transition's own statement (apps.tasks.transitions), so a task
that ended always has its row and a task that did not never has one; beat's heartbeat
(callbacks.dispatch_due) hands due rows to the io workers (callbacks.deliver).
"""

from django.db import models
from django.db.models import Q

from apps.tasks.models import Task


class CallbackState(models.TextChoices):
    PENDING = "pending", "Pending"
    DELIVERED = "delivered", "Delivered"
    FAILED = "failed", "Failed"  # gave up after CALLBACK_MAX_ATTEMPTS


class TaskCallback(models.Model):
    # Indexed: the cascade and the task's detail (its latest callback) look rows up by task.
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="callbacks")
    # A copy of the task's callback_url when it ended: what is owed is that POST.
    url = models.CharField(max_length=2000)
    # The terminal status the task reached: the event is "task.<status>".
    status = models.CharField(max_length=20)
    attempts = models.PositiveIntegerField(default=0)
    # When the next POST is due; dispatch pushes it ahead as a lease while one is in flight.
    next_attempt_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)  # gave up
    last_error = models.TextField(blank=True, default="")
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The dispatcher's scan: only the rows still owed.
            models.Index(
                fields=["next_attempt_at"],
                name="callback_due",
                condition=Q(delivered_at__isnull=True, failed_at__isnull=True),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event} of {self.task_id} to {self.url} ({self.state})"

    @property
    def state(self) -> CallbackState:
        if self.delivered_at is not None:
            return CallbackState.DELIVERED
        if self.failed_at is not None:
            return CallbackState.FAILED
        return CallbackState.PENDING

    @property
    def event(self) -> str:
        return f"task.{self.status}"
