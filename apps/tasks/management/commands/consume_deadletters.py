"""Run the dead-letter consumer until SIGTERM or SIGINT."""

import logging
import signal
from typing import Any

from django.core.management.base import BaseCommand

from apps.tasks.deadletters import DeadLetterConsumer
from apps.tasks.topology import declare_topology
from taskflow.celery import app

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Consume the dead-letter queue and record on each task why it was dead-lettered."

    def handle(self, *args: Any, **options: Any) -> None:
        with app.connection_for_write() as connection:
            declare_topology(connection)
            consumer = DeadLetterConsumer(connection)

            def stop(signum: int, frame: Any) -> None:
                logger.info("Dead-letter consumer stopping (signal %s)", signum)
                consumer.should_stop = True

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            logger.info("Dead-letter consumer started")
            consumer.run()
        logger.info("Dead-letter consumer stopped")
