"""The task type table: one row per type, where staff override a type's settings and create
webhook types.

A code type (registered with `taskflow.sdk.handler`) gets its row when the registry is synced
(`manage.py setup_broker`, after `migrate`, and when the admin lists the types). Its override
columns start empty, and empty means "the code's default": a deploy that changes a default moves
every type staff did not override, and a sync never touches what staff set.

A webhook type lives only here: staff create it in the admin, and a worker POSTs its tasks to
`url` (apps.handlers.webhooks).
"""

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from apps.tasks.backoff import MAX_RETRY_DELAY_SECONDS
from apps.tasks.queues import WORK_QUEUES


class TaskTypeKind(models.TextChoices):
    CODE = "code", "Code (SDK handler)"
    WEBHOOK = "webhook", "Webhook"


class RatePeriod(models.TextChoices):
    SECOND = "second", "per second"
    MINUTE = "minute", "per minute"


RATE_PERIOD_SECONDS = {RatePeriod.SECOND: 1, RatePeriod.MINUTE: 60}
QUEUE_CHOICES = [(queue.value, queue.value) for queue in WORK_QUEUES]


class TaskType(models.Model):
    name = models.CharField(max_length=100, unique=True)
    kind = models.CharField(max_length=10, choices=TaskTypeKind.choices, default=TaskTypeKind.CODE)
    enabled = models.BooleanField(
        default=True,
        help_text="A disabled type refuses new tasks (400 task_type_disabled); its queued tasks "
        "wait, held, until it is enabled again. Running tasks run to their end.",
    )
    description = models.TextField(blank=True, default="")

    # Overrides: empty means the code's default (or the platform's, for webhook types).
    queue = models.CharField(max_length=50, blank=True, default="", choices=QUEUE_CHOICES)
    default_max_retries = models.PositiveSmallIntegerField(null=True, blank=True)
    max_retries_limit = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="The most retries a client may ask for (max_retries)."
    )
    # At most the longest retry wait (apps.tasks.backoff): a wait past it is cut to it anyway.
    backoff_base_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(MAX_RETRY_DELAY_SECONDS)],
    )
    backoff_cap_seconds = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.0), MaxValueValidator(MAX_RETRY_DELAY_SECONDS)],
    )
    time_limit_seconds = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)]
    )

    # Cluster-wide limits (apps.handlers.limits): empty means none.
    rate_limit_count = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="At most this many tasks start per period, across all workers (Redis).",
    )
    rate_limit_period = models.CharField(
        max_length=10, choices=RatePeriod.choices, default=RatePeriod.SECOND
    )
    concurrency_limit = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1)],
        help_text="At most this many tasks of the type run at once, across all workers.",
    )

    # Webhook types only.
    url = models.URLField(max_length=2048, blank=True, default="")
    signing_secret = models.CharField(max_length=200, blank=True, default="")
    timeout_seconds = models.FloatField(null=True, blank=True, validators=[MinValueValidator(0.1)])
    payload_json_schema = models.JSONField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(
                condition=Q(kind__in=TaskTypeKind.values), name="tasktype_kind_is_known"
            ),
            models.CheckConstraint(
                condition=Q(kind=TaskTypeKind.CODE) | (~Q(url="") & ~Q(signing_secret="")),
                name="tasktype_webhook_has_url_and_secret",
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_webhook(self) -> bool:
        return self.kind == TaskTypeKind.WEBHOOK
