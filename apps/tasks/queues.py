"""The RabbitMQ topology: every queue, exchange and route is declared here and nowhere else.

taskflow (direct) --default--> default  -+
                  --io-------> io        +-- x-dead-letter-exchange --> taskflow.dlx (fanout)
                  --cpu------> cpu      -+                                   |
                  --maintenance-> maintenance (beat's releaser; no DLX)      v
                                                                     taskflow.deadletter
"""

from enum import StrEnum

from kombu import Exchange, Queue

WORK_EXCHANGE_NAME = "taskflow"
DEAD_LETTER_EXCHANGE_NAME = "taskflow.dlx"
DEAD_LETTER_QUEUE_NAME = "taskflow.deadletter"


class TaskQueue(StrEnum):
    DEFAULT = "default"  # short general-purpose tasks
    IO = "io"  # I/O-bound tasks: a thread pool worker with high concurrency
    CPU = "cpu"  # CPU-bound tasks: a prefork worker, one process per core
    MAINTENANCE = "maintenance"  # the releaser and other housekeeping sent by beat


WORK_QUEUES = (TaskQueue.DEFAULT, TaskQueue.IO, TaskQueue.CPU)

work_exchange = Exchange(WORK_EXCHANGE_NAME, type="direct", durable=True)
dead_letter_exchange = Exchange(DEAD_LETTER_EXCHANGE_NAME, type="fanout", durable=True)


def dead_letter_arguments() -> dict[str, str]:
    return {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE_NAME}


def work_queue(name: TaskQueue) -> Queue:
    return Queue(
        name.value,
        work_exchange,
        routing_key=name.value,
        durable=True,
        queue_arguments=dead_letter_arguments(),
    )


def maintenance_queue() -> Queue:
    # Housekeeping messages expire rather than pile up, and are never dead-lettered.
    return Queue(
        TaskQueue.MAINTENANCE.value,
        work_exchange,
        routing_key=TaskQueue.MAINTENANCE.value,
        durable=True,
    )


def dead_letter_queue() -> Queue:
    return Queue(DEAD_LETTER_QUEUE_NAME, dead_letter_exchange, routing_key="#", durable=True)


def all_queues() -> list[Queue]:
    return [*(work_queue(name) for name in WORK_QUEUES), maintenance_queue()]


# Housekeeping tasks go to the maintenance queue; tasks.execute names its queue per message.
TASK_ROUTES = {
    "tasks.release_due": {"queue": TaskQueue.MAINTENANCE.value},
    "schedules.fire_due": {"queue": TaskQueue.MAINTENANCE.value},
    "callbacks.dispatch_due": {"queue": TaskQueue.MAINTENANCE.value},
    # The POSTs themselves: network waits, on the io worker's large pool.
    "callbacks.deliver": {"queue": TaskQueue.IO.value},
}
