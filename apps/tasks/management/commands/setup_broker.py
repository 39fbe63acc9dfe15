"""Declare TaskFlow's RabbitMQ topology and make sure beat's release schedule exists."""

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from apps.handlers.services import task_types_sync
from apps.tasks.schedules import ensure_release_schedule
from apps.tasks.topology import PolicyError, declare_topology, set_policies_with_rabbitmqctl
from taskflow.celery import app


class Command(BaseCommand):
    help = (
        "Declare exchanges and queues (with dead-lettering) and the releaser's beat schedule; "
        "give every code task type its row in the task type table."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--policies",
            action="store_true",
            help=(
                "Also set the queue policies of deployments/rabbitmq/definitions.json on the "
                "broker's vhost with rabbitmqctl, when the broker runs on this machine (`make "
                "run`; the compose broker loads them at boot). A failure is a warning."
            ),
        )
        parser.add_argument(
            "--require-policies",
            action="store_true",
            help="As --policies, but a failure to set them is an error (the bench).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        with app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=3)
            declare_topology(connection)
            host, vhost = connection.hostname, connection.virtual_host
        self.stdout.write("RabbitMQ exchanges and queues declared.")
        if options["policies"] or options["require_policies"]:
            self._set_policies(host, vhost, strict=options["require_policies"])
        interval_ms = settings.TASKFLOW["RELEASE_INTERVAL_MS"]
        ensure_release_schedule(interval_ms=interval_ms)
        self.stdout.write(f"Release schedule: every {interval_ms} ms.")
        added = task_types_sync()
        self.stdout.write(
            f"Task types: {len(added)} added to the table"
            + (f" ({', '.join(added)})." if added else ".")
        )

    def _set_policies(self, host: str | None, vhost: str, *, strict: bool) -> None:
        if host not in {"localhost", "127.0.0.1", "::1"}:
            self.stdout.write(
                f"Queue policies not set: the broker ({host}) is not on this machine; set those "
                "of deployments/rabbitmq/definitions.json there (docs/scaling.md)."
            )
            return
        try:
            names = set_policies_with_rabbitmqctl(vhost)
        except PolicyError as exc:
            # A warning, not a failure: everything works without them (they make long queues
            # cheaper and housekeeping messages expire), and `make run` must still start.
            self.stderr.write(
                f"WARNING: queue policies not set on vhost {vhost!r}: {exc}. Run this as root "
                "(or the rabbitmq user) to set them, or set those of "
                "deployments/rabbitmq/definitions.json by hand (docs/scaling.md)."
            )
            if strict:
                raise CommandError(f"Could not set the queue policies: {exc}") from None
            return
        self.stdout.write(f"Queue policies set on vhost {vhost!r}: {', '.join(names)}.")
