"""Users' files: uploads, and what tasks produce (processed images, downloads).

The bytes live in Django's storage under a key we generate (`files/<owner>/<uuid>`); the name a
user gave is metadata only and never reaches the file system.
"""

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q


class UserFile(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="files"
    )
    name = models.CharField(max_length=255)
    size = models.BigIntegerField()
    content_type = models.CharField(max_length=255)
    storage_key = models.CharField(max_length=255, unique=True, editable=False)
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    # The task that produced the file, if a task did; deleting the task keeps the file.
    source_task = models.ForeignKey(
        "tasks.Task",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="output_files",
    )
    # Which output of its task this is (e.g. "url:3"): a retried task finds what an earlier
    # attempt already stored instead of storing it twice.
    source_key = models.CharField(max_length=100, blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["source_task", "source_key"],
                condition=Q(source_task__isnull=False) & ~Q(source_key=""),
                name="userfile_unique_task_output",
            ),
        ]
        indexes = [
            models.Index(fields=["owner", "-created_at", "-id"], name="userfile_owner_created"),
            models.Index(fields=["owner", "name"], name="userfile_owner_name"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.size} bytes)"

    @property
    def download_path(self) -> str:
        return f"/api/files/{self.id}/download"
