"""Rollups of the tasks table, so that statistics and metrics never count millions of rows.

They are written by PostgreSQL triggers on `tasks_task` (migrations/0002_rollup_triggers.py), in
the same statement as the change they count: a task created,
moved by `apps.tasks.transitions.transition`, dead-lettered or deleted. Triggers rather than code
in each write path, so that every path is counted (the admin's delete, a user's cascade, a bulk
update) and the numbers stay exact.

Every row exists per owner and once more for everyone (owner_id ALL_OWNERS), so that staff's
numbers read a few rows whatever the number of owners.

Each row also has a `shard` (0..ROLLUP_SHARDS-1, drawn at random once per statement): concurrent
workers then update different rows instead of queueing on one hot row per type. Readers sum the
shards.
"""

from django.contrib.postgres.fields import ArrayField
from django.db import models

ROLLUP_SHARDS = 16
# Rows with this owner_id count everyone's tasks (migration 0003): what staff and /metrics read.
ALL_OWNERS = 0

# Upper bounds (seconds) of the queue-wait and run-time histogram buckets; the last is +Inf.
# The same list is in the SQL function monitoring_histogram (a test checks they agree).
HISTOGRAM_BOUNDS: tuple[float, ...] = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1000,
    2000,
    5000,
    float("inf"),
)


class TaskCount(models.Model):
    """How many tasks each owner has now, per type and status (summed over shards)."""

    owner_id = models.BigIntegerField()
    type = models.CharField(max_length=100)
    status = models.CharField(max_length=20)
    shard = models.SmallIntegerField()
    n = models.BigIntegerField(db_default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["owner_id", "type", "status", "shard"], name="taskcount_key"
            )
        ]

    def __str__(self) -> str:
        return f"{self.owner_id} {self.type} {self.status}: {self.n}"


class _TaskEvents(models.Model):
    """Event counters and the two histograms; in one minute (TaskMinuteStat) or since ever."""

    created = models.BigIntegerField(db_default=0)
    started = models.BigIntegerField(db_default=0)  # attempts claimed by a worker
    succeeded = models.BigIntegerField(db_default=0)
    failed = models.BigIntegerField(db_default=0)
    retried = models.BigIntegerField(db_default=0)  # attempts that failed with retries left
    cancelled = models.BigIntegerField(db_default=0)
    dead_lettered = models.BigIntegerField(db_default=0)  # recorded by the dead-letter consumer
    replayed = models.BigIntegerField(db_default=0)  # failed or cancelled tasks retried by hand
    # Queue wait: from the moment a task was (re)queued to the moment a worker claimed it.
    wait_count = models.BigIntegerField(db_default=0)
    wait_sum = models.FloatField(db_default=0.0)
    wait_buckets = ArrayField(models.BigIntegerField(), null=True)
    # Run time: one attempt, from its claim to its end (lost attempts are left out).
    run_count = models.BigIntegerField(db_default=0)
    run_sum = models.FloatField(db_default=0.0)
    run_buckets = ArrayField(models.BigIntegerField(), null=True)

    class Meta:
        abstract = True


class TaskMinuteStat(_TaskEvents):
    """What happened to one owner's tasks of one type in one minute. Kept for ROLLUP_RETENTION,
    then folded into TaskTotal by `monitoring.fold_rollups`."""

    minute = models.DateTimeField()
    owner_id = models.BigIntegerField()
    type = models.CharField(max_length=100)
    shard = models.SmallIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["minute", "owner_id", "type", "shard"], name="taskminutestat_key"
            )
        ]
        indexes = [models.Index(fields=["owner_id", "minute"], name="taskminutestat_owner")]

    def __str__(self) -> str:
        return f"{self.minute:%H:%M} {self.owner_id} {self.type}"


class TaskTotal(_TaskEvents):
    """Everything folded out of TaskMinuteStat, per type: with it, the counters never go down."""

    type = models.CharField(max_length=100, unique=True)

    def __str__(self) -> str:
        return self.type
