"""Recurring schedules: a task type and payload, created as a task on a cron or an interval."""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class Schedule(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # No index of its own: both indexes below start with owner.
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        related_name="schedules",
        db_index=False,
    )
    name = models.CharField(max_length=200)
    type = models.CharField(max_length=100)
    payload = models.JSONField(default=dict)
    # Exactly one of cron (5 fields, read in `timezone`) and every_seconds (a check constraint).
    cron = models.CharField(max_length=200, blank=True, default="")
    timezone = models.CharField(max_length=64, default="UTC")
    every_seconds = models.PositiveIntegerField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    # The next firing; null while disabled.
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_run_at = models.DateTimeField(null=True, blank=True)
    # A plain id, not a foreign key: the task may be deleted (retention, DELETE) before the
    # schedule, and a task delete should not have to visit schedules.
    last_task_id = models.UUIDField(null=True, blank=True)
    # Why the last firing created no task (the active-task cap, the type disabled...); "" if it did.
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "name"], name="schedule_unique_name_per_owner"
            ),
            models.CheckConstraint(
                condition=(Q(cron="") & Q(every_seconds__isnull=False))
                | (~Q(cron="") & Q(every_seconds__isnull=True)),
                name="schedule_cron_or_every_seconds",
            ),
        ]
        indexes = [
            # beat's due scan (services.fire_due_schedules): enabled schedules by next_run_at.
            models.Index(fields=["next_run_at"], condition=Q(enabled=True), name="schedule_due"),
            # An owner's list, newest first (the cursor pagination's order).
            models.Index(fields=["owner", "-created_at", "-id"], name="schedule_owner_created"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def timing(self) -> str:
        """The cron expression and its zone, or the interval: for lists and logs."""
        if self.cron:
            return f"{self.cron} ({self.timezone})"
        return f"every {self.every_seconds} s"
