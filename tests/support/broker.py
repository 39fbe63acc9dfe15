"""Direct access to RabbitMQ for tests: queue depths, and the dead-letter queue's messages."""

import json
import os
import subprocess
from typing import Any
from urllib.parse import urlparse

from kombu import Connection

from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME, TaskQueue
from apps.tasks.topology import declare_topology


class BrokerProbe:
    def __init__(self, url: str) -> None:
        self.connection = Connection(url)
        self.connection.ensure_connection(max_retries=3)
        self.channel: Any = self.connection.channel()
        declare_topology(self.connection)

    def depth(self, queue: str) -> int:
        _, messages, _ = self.channel.queue_declare(queue=queue, passive=True)
        return int(messages)

    def get(self, queue: str) -> Any:
        """Take one message (acked), or None."""
        message = self.channel.basic_get(queue=queue, no_ack=True)
        return message

    def peek(self, queue: str) -> Any:
        """Read one message and put it back, or None."""
        message = self.channel.basic_get(queue=queue, no_ack=False)
        if message is not None:
            self.channel.basic_reject(message.delivery_tag, requeue=True)
        return message

    def drain(self, queue: str) -> list[Any]:
        out = []
        while (message := self.get(queue)) is not None:
            out.append(message)
        return out

    def task_ids(self, queue: str) -> list[str]:
        """Take every message of the queue: the task ids they carry, each message's in order."""
        return [task_id for message in self.drain(queue) for task_id in tasks_in(message)]

    def purge_all(self) -> None:
        for queue in [*TaskQueue, DEAD_LETTER_QUEUE_NAME]:
            self.channel.queue_purge(str(queue))

    def close(self) -> None:
        self.channel.close()
        self.connection.release()


def use_broker(url: str) -> None:
    """Point this process's Celery app at `url`, dropping every pooled connection and producer."""
    from kombu import pools

    from taskflow.celery import app as celery_app

    app: Any = celery_app
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    pools.reset()
    app.conf.broker_url = url
    # Celery's conf.broker_url prefers this variable to anything configured.
    os.environ["CELERY_BROKER_URL"] = url


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=90, check=True
    )
    return done.stdout


def vhost_url(session_url: str, vhost: str) -> str:
    return urlparse(session_url)._replace(path=f"/{vhost}").geturl()


def tasks_in(message: Any) -> list[str]:
    """The task ids an execution message carries: tasks.execute one, tasks.execute_batch several."""
    args = json.loads(message.body)[0]
    if message.headers["task"] == "tasks.execute_batch":
        return [task_id for task_id, _ in args[1]]
    return [args[0]]
