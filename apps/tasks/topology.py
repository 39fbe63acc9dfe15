"""Declare every exchange and queue, so that nothing dead-lettered falls on the floor.

A queue's x-dead-letter-exchange does not need to exist when the queue is declared, but a message
rejected while it does not exist (or has no queue bound) is silently dropped. Workers, the
dead-letter consumer and `manage.py setup_broker` all declare the whole topology at start.
"""

import contextlib
from typing import Any

from kombu import Connection

from apps.tasks.queues import all_queues, dead_letter_exchange, dead_letter_queue, work_exchange


def declare_topology(connection: Connection) -> None:
    channel = connection.default_channel
    work_exchange(channel).declare()
    dead_letter_exchange(channel).declare()
    dead_letter_queue()(channel).declare()
    for queue in all_queues():
        queue(channel).declare()


def queue_depths(connection: Connection, names: list[str]) -> dict[str, int | None]:
    """Ready messages in each queue (None where the queue does not exist or cannot be read)."""
    depths: dict[str, int | None] = {}
    for name in names:
        channel: Any = connection.channel()
        try:
            _, messages, _ = channel.queue_declare(queue=name, passive=True)
            depths[name] = int(messages)
        except Exception:
            depths[name] = None
        finally:
            # A failed passive declare has already closed the channel.
            with contextlib.suppress(Exception):
                channel.close()
    return depths
