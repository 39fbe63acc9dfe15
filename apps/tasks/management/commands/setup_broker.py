"""Declare TaskFlow's RabbitMQ topology and make sure beat's release schedule exists."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from apps.handlers.services import task_types_sync
from apps.tasks.schedules import ensure_release_schedule
from apps.tasks.topology import declare_topology
from taskflow.celery import app


class Command(BaseCommand):
    help = (
        "Declare exchanges and queues (with dead-lettering) and the releaser's beat schedule; "
        "give every code task type its row in the task type table."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
            declare_topology(connection)
        self.stdout.write("RabbitMQ exchanges and queues declared.")
        interval_ms = settings.TASKFLOW["RELEASE_INTERVAL_MS"]
        ensure_release_schedule(interval_ms=interval_ms)
        self.stdout.write(f"Release schedule: every {interval_ms} ms.")
        added = task_types_sync()
        self.stdout.write(
            f"Task types: {len(added)} added to the table"
            + (f" ({', '.join(added)})." if added else ".")
        )
