"""`manage.py setup_broker --policies`: the compose broker's queue policies on a local vhost."""

import io
import json
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from kombu import Connection

from apps.tasks.queues import DEAD_LETTER_QUEUE_NAME, TaskQueue, work_exchange
from apps.tasks.topology import broker_policies, set_policies_with_rabbitmqctl
from tests.support.broker import rabbitmqctl, vhost_url
from tests.support.wait import wait_for

WORK = [TaskQueue.DEFAULT.value, TaskQueue.IO.value, TaskQueue.CPU.value]


def queue_rows(vhost: str, *columns: str) -> dict[str, list[str]]:
    out = rabbitmqctl("list_queues", "-p", vhost, "name", *columns, "--no-table-headers")
    return {row[0]: row[1:] for row in (line.split("\t") for line in out.splitlines() if line)}


def policies_applied(vhost: str) -> dict[str, str]:
    return {name: row[0] for name, row in queue_rows(vhost, "policy").items()}


def messages_in_memory_after_publishing(url: str, vhost: str, count: int) -> int:
    """Publish `count` persistent messages to `default`; how many RabbitMQ keeps in memory."""
    with Connection(url) as connection:
        producer = connection.Producer(exchange=work_exchange)
        for number in range(count):
            producer.publish({"n": number}, routing_key=TaskQueue.DEFAULT.value, delivery_mode=2)
    wait_for(
        lambda: queue_rows(vhost, "messages")[TaskQueue.DEFAULT.value] == [str(count)],
        what="the messages in the queue",
    )
    return int(queue_rows(vhost, "messages_ram")[TaskQueue.DEFAULT.value][0])


def test_policies_make_the_work_and_dead_letter_queues_lazy(fresh_vhost, rabbitmq_vhost):
    out = io.StringIO()
    call_command("setup_broker", "--policies", stdout=out)

    assert f"Queue policies set on vhost '{fresh_vhost}'" in out.getvalue()
    expected = {
        **dict.fromkeys(WORK, "taskflow-work-lazy"),
        TaskQueue.MAINTENANCE.value: "taskflow-maintenance",
        DEAD_LETTER_QUEUE_NAME: "taskflow-deadletter",
    }
    wait_for(lambda: policies_applied(fresh_vhost) == expected, what="the policies")
    # Lazy: on disk only, none kept in memory.
    url = vhost_url(rabbitmq_vhost, fresh_vhost)
    assert messages_in_memory_after_publishing(url, fresh_vhost, 50) == 0


def test_without_the_flag_no_policy_is_set(fresh_vhost, rabbitmq_vhost):
    call_command("setup_broker", stdout=io.StringIO())

    assert rabbitmqctl("list_policies", "-p", fresh_vhost, "--no-table-headers").strip() == ""
    # The default mode keeps them in memory as well: what the lazy test above can tell apart.
    url = vhost_url(rabbitmq_vhost, fresh_vhost)
    assert messages_in_memory_after_publishing(url, fresh_vhost, 50) == 50


def test_the_policies_set_are_the_definitions_files(fresh_vhost):
    call_command("setup_broker", "--policies", stdout=io.StringIO())

    listed = json.loads(rabbitmqctl("list_policies", "-p", fresh_vhost, "--formatter", "json"))
    on_broker = {
        p["name"]: (p["pattern"], p["priority"], json.loads(p["definition"])) for p in listed
    }
    assert on_broker == {
        p["name"]: (p["pattern"], p["priority"], p["definition"]) for p in broker_policies()
    }


def test_quorum_work_queues_take_the_delivery_limit_instead(fresh_vhost, rabbitmq_vhost):
    """docs/scaling.md's cluster: the same policies, quorum queues get `taskflow-work`."""
    with Connection(vhost_url(rabbitmq_vhost, fresh_vhost)) as connection:
        channel: Any = connection.channel()
        for name in WORK:
            channel.queue_declare(
                name,
                durable=True,
                auto_delete=False,
                arguments={"x-queue-type": "quorum", "x-dead-letter-exchange": "taskflow.dlx"},
            )

    set_policies_with_rabbitmqctl(fresh_vhost)

    wait_for(
        lambda: policies_applied(fresh_vhost) == dict.fromkeys(WORK, "taskflow-work"),
        what="the policies",
    )


def test_without_rabbitmqctl_the_command_warns_and_goes_on(fresh_vhost, monkeypatch, tmp_path):
    """`make run` must start without the policies; the bench must not measure without them."""
    err = io.StringIO()
    with monkeypatch.context() as patched:
        patched.setenv("PATH", str(tmp_path))  # an empty directory: no rabbitmqctl on it
        call_command("setup_broker", "--policies", stdout=io.StringIO(), stderr=err)
        with pytest.raises(CommandError, match=r"rabbitmqctl is not on the PATH"):
            call_command("setup_broker", "--require-policies", stdout=io.StringIO())

    assert "WARNING: queue policies not set" in err.getvalue()
    assert "rabbitmqctl is not on the PATH" in err.getvalue()
    # The topology was declared all the same.
    assert TaskQueue.DEFAULT.value in queue_rows(fresh_vhost)
    assert rabbitmqctl("list_policies", "-p", fresh_vhost, "--no-table-headers").strip() == ""
