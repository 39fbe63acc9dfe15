"""What RabbitMQ and the workers say, read over AMQP, and how long the answers are kept."""

from typing import Any

import pytest

from apps.monitoring import collectors
from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME
from apps.tasks.topology import declare_topology


@pytest.fixture(autouse=True)
def no_cached_answers() -> Any:
    collectors.forget_cached_state()
    yield
    collectors.forget_cached_state()


def test_queue_depths_and_consumers_come_from_rabbitmq(broker):
    for _ in range(2):
        broker.channel.basic_publish(
            broker.channel.prepare_message(b"{}"), exchange="", routing_key="io"
        )
    depths = {q["name"]: q for q in collectors.read_queue_depths()}
    assert list(depths) == ["default", "io", "cpu", "maintenance", DEAD_LETTER_QUEUE_NAME]
    assert depths["io"] == {"name": "io", "exists": True, "messages": 2, "consumers": 0}


def test_a_missing_queue_is_reported_not_fatal(broker):
    broker.channel.queue_delete("cpu")
    try:
        depths = {q["name"]: q for q in collectors.read_queue_depths()}
        assert depths["cpu"]["exists"] is False
        assert depths["default"]["exists"] is True  # the queues after it are still read
        assert depths[DEAD_LETTER_QUEUE_NAME]["exists"] is True
    finally:
        declare_topology(broker.connection)


def test_the_workers_answer_is_reused_for_a_while(broker):
    first = collectors.workers_online()
    assert first["workers"] == []  # no worker runs in this test
    again = collectors.workers_online()
    assert again["at"] == first["at"]  # not asked again within WORKERS_FRESH_SECONDS
