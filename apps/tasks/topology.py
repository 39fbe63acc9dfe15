"""Declare every exchange and queue, so that nothing dead-lettered falls on the floor.

A queue's x-dead-letter-exchange does not need to exist when the queue is declared, but a message
rejected while it does not exist (or has no queue bound) is silently dropped. Workers, the
dead-letter consumer and `manage.py setup_broker` all declare the whole topology at start.
"""

from kombu import Connection

from apps.tasks.queues import all_queues, dead_letter_exchange, dead_letter_queue, work_exchange


def declare_topology(connection: Connection) -> None:
    channel = connection.default_channel
    work_exchange(channel).declare()
    dead_letter_exchange(channel).declare()
    dead_letter_queue()(channel).declare()
    for queue in all_queues():
        queue(channel).declare()
