"""Declare every exchange and queue, so that nothing dead-lettered falls on the floor.

A queue's x-dead-letter-exchange does not need to exist when the queue is declared, but a message
rejected while it does not exist (or has no queue bound) is silently dropped. Workers, the
dead-letter consumer and `manage.py setup_broker` all declare the whole topology at start.
"""

import contextlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from django.conf import settings
from kombu import Connection

from apps.tasks.queues import all_queues, dead_letter_exchange, dead_letter_queue, work_exchange


def declare_topology(connection: Connection) -> None:
    channel = connection.default_channel
    work_exchange(channel).declare()
    dead_letter_exchange(channel).declare()
    dead_letter_queue()(channel).declare()
    for queue in all_queues():
        queue(channel).declare()


def definitions_file() -> Path:
    """The broker definitions the compose RabbitMQ loads at boot (not in the app's image)."""
    return Path(settings.BASE_DIR) / "deployments" / "rabbitmq" / "definitions.json"


def broker_policies() -> list[dict[str, Any]]:
    """The queue policies of definitions_file(): expiry of housekeeping messages, lazy work and
    dead-letter queues (docs/scaling.md). Policies, not queue arguments: a queue's arguments are
    fixed when it is declared, a policy changes on a running broker."""
    policies: list[dict[str, Any]] = json.loads(definitions_file().read_text())["policies"]
    return policies


class PolicyError(Exception):
    pass


def set_policies_with_rabbitmqctl(vhost: str) -> list[str]:
    """Set broker_policies() on `vhost` of the RabbitMQ node on this machine; their names.

    For a broker that does not boot from definitions_file(): `make run`'s local one, the bench's
    vhost. Needs `rabbitmqctl` and the node's Erlang cookie (root, or the rabbitmq user)."""
    command = shutil.which("rabbitmqctl")
    if command is None:
        raise PolicyError("rabbitmqctl is not on the PATH")
    names = []
    for policy in broker_policies():
        # An argument list, no shell: the values come from our own definitions file.
        done = subprocess.run(  # noqa: S603
            [
                command,
                "-q",
                "set_policy",
                "-p",
                vhost,
                "--priority",
                str(policy.get("priority", 0)),
                "--apply-to",
                policy["apply-to"],
                policy["name"],
                policy["pattern"],
                json.dumps(policy["definition"]),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            raise PolicyError(
                f"rabbitmqctl set_policy {policy['name']} failed: "
                f"{(done.stderr or done.stdout).strip()}"
            )
        names.append(policy["name"])
    return names


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
