"""deployments/rabbitmq/: the definitions declare what apps/tasks/queues.py declares, and RabbitMQ
3.10 (the version of the compose image, installed on this machine) accepts them as they are."""

import json
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kombu import Connection, Exchange, Queue

from apps.tasks.queues import (
    DEAD_LETTER_EXCHANGE_NAME,
    DEAD_LETTER_QUEUE_NAME,
    WORK_QUEUES,
    TaskQueue,
    all_queues,
    dead_letter_exchange,
    dead_letter_queue,
    work_exchange,
)
from apps.tasks.topology import declare_topology
from tests.deployments.support import DEFINITIONS_FILE, RABBITMQ_CONF
from tests.support.processes import free_port
from tests.support.wait import wait_for

ENTRYPOINT = RABBITMQ_CONF.parent / "entrypoint.sh"


@pytest.fixture(scope="module")
def definitions() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DEFINITIONS_FILE.read_text())
    return loaded


def code_queues() -> list[Queue]:
    return [*all_queues(), dead_letter_queue()]


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in items}


def test_the_exchanges_are_the_codes(definitions):
    declared = by_name(definitions["exchanges"])
    assert set(declared) == {work_exchange.name, dead_letter_exchange.name}
    exchange: Exchange
    for exchange in (work_exchange, dead_letter_exchange):
        assert declared[exchange.name] == {
            "name": exchange.name,
            "vhost": "/",
            "type": exchange.type,
            "durable": exchange.durable,
            "auto_delete": exchange.auto_delete,
            "internal": False,
            "arguments": exchange.arguments or {},
        }


def test_the_queues_and_their_dead_letter_arguments_are_the_codes(definitions):
    declared = by_name(definitions["queues"])
    assert set(declared) == {queue.name for queue in code_queues()}
    for queue in code_queues():
        assert declared[queue.name] == {
            "name": queue.name,
            "vhost": "/",
            "durable": queue.durable,
            "auto_delete": queue.auto_delete,
            # RabbitMQ refuses a redeclaration whose arguments differ (PRECONDITION_FAILED).
            "arguments": queue.queue_arguments or {},
        }
    # The work queues dead-letter into taskflow.dlx; housekeeping and the DLQ itself do not.
    for name in WORK_QUEUES:
        assert declared[name]["arguments"] == {"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE_NAME}
    assert declared[TaskQueue.MAINTENANCE]["arguments"] == {}


def test_the_bindings_are_the_codes(definitions):
    declared = {
        (b["source"], b["destination"], b["routing_key"])
        for b in definitions["bindings"]
        if b["destination_type"] == "queue"
    }
    assert declared == {(q.exchange.name, q.name, q.routing_key) for q in code_queues()}


def test_the_policies_match_the_queues_they_are_for(definitions):
    names = [queue.name for queue in code_queues()]
    policies = by_name(definitions["policies"])

    def matched(policy: str) -> set[str]:
        return {name for name in names if re.search(policies[policy]["pattern"], name)}

    # Housekeeping messages expire and are capped instead of piling up while no worker runs.
    assert matched("taskflow-maintenance") == {TaskQueue.MAINTENANCE.value}
    maintenance = policies["taskflow-maintenance"]["definition"]
    assert maintenance["message-ttl"] > 0 and maintenance["overflow"] == "drop-head"
    # A delivery limit on the work queues (quorum queues only: a policy applies to a queue only
    # if its type supports every key, so classic queues skip it) and, below it, lazy mode (classic
    # queues only) for them and the dead letters: a long default-mode queue holds publisher
    # confirms back (docs/benchmarks.md, B7). test_setup_broker.py checks which applies where.
    work = {queue.value for queue in WORK_QUEUES}
    assert matched("taskflow-work") == matched("taskflow-work-lazy") == work
    assert policies["taskflow-work"]["definition"] == {"delivery-limit": 10}
    assert policies["taskflow-work-lazy"]["definition"] == {"queue-mode": "lazy"}
    assert policies["taskflow-work-lazy"]["priority"] < policies["taskflow-work"]["priority"]
    assert matched("taskflow-deadletter") == {DEAD_LETTER_QUEUE_NAME}
    assert policies["taskflow-deadletter"]["definition"] == {"queue-mode": "lazy"}
    for policy in policies.values():
        assert policy["apply-to"] == "queues"
        assert "dead-letter-exchange" not in policy["definition"]  # the code's x-args own that


def rabbitmqctl(*args: str, node: str | None = None, stdin: str | None = None) -> str:
    command = ["rabbitmqctl", "-q", *(["-n", node] if node else []), *args]
    result = subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=90, check=False
    )
    assert result.returncode == 0, f"{' '.join(command)}: {result.stdout}{result.stderr}"
    return result.stdout


def broker_url(user: str, password: str, port: int, vhost: str) -> str:
    credentials = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return f"amqp://{credentials}@127.0.0.1:{port}/{quote(vhost, safe='')}"


def assert_code_declares_the_same_topology(url: str) -> None:
    """Declaring the code's topology over the imported one: any difference is a channel error."""
    with Connection(url) as connection:
        connection.ensure_connection(max_retries=3)
        declare_topology(connection)
        channel: Any = connection.default_channel
        for queue in code_queues():
            _, messages, _ = channel.queue_declare(queue=queue.name, passive=True)
            assert messages == 0


@pytest.fixture
def imported_vhost(definitions: dict[str, Any]) -> Iterator[str]:
    """A vhost of the machine's broker with the definitions imported by rabbitmqctl."""
    vhost = f"taskflow-definitions-{uuid.uuid4().hex[:8]}"
    text = json.dumps(definitions).replace('"vhost": "/"', f'"vhost": {json.dumps(vhost)}')
    moved = {**json.loads(text), "vhosts": [{"name": vhost}]}
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        rabbitmqctl("import_definitions", "--format", "json", stdin=json.dumps(moved))
        yield vhost
    finally:
        rabbitmqctl("delete_vhost", vhost)


def test_the_running_broker_accepts_the_definitions_and_the_code_agrees(imported_vhost):
    assert_code_declares_the_same_topology(broker_url("guest", "guest", 5672, imported_vhost))

    def applied() -> dict[str, str]:  # policies apply to queues asynchronously
        out = rabbitmqctl(
            "list_queues", "-p", imported_vhost, "name", "policy", "--no-table-headers"
        )
        return dict(line.split("\t") for line in out.splitlines() if line)

    expected = {
        TaskQueue.MAINTENANCE.value: "taskflow-maintenance",
        # classic queues: taskflow-work (delivery-limit) is not applicable, the lazy one is
        TaskQueue.DEFAULT.value: "taskflow-work-lazy",
        DEAD_LETTER_QUEUE_NAME: "taskflow-deadletter",
    }
    wait_for(lambda: expected.items() <= applied().items(), timeout=30, what="the policies")


def test_a_queue_declared_differently_from_the_definitions_is_refused(imported_vhost):
    """The failure the comparisons above guard against (seed 003's PRECONDITION_FAILED)."""
    with Connection(broker_url("guest", "guest", 5672, imported_vhost)) as connection:
        without_dlx = Queue(TaskQueue.IO.value, work_exchange, routing_key="io", durable=True)
        with pytest.raises(connection.channel_errors, match="PRECONDITION_FAILED"):
            without_dlx(connection.default_channel).declare()


@pytest.fixture
def rabbitmq_node() -> Iterator[dict[str, Any]]:
    """A second RabbitMQ node, booted with deployments/rabbitmq/ as the compose service boots:
    the user written by entrypoint.sh from AMQP_USER/AMQP_PASSWORD, the topology beside it, and
    rabbitmq.conf (ports moved off the machine's own broker)."""
    base = Path(tempfile.mkdtemp(prefix="taskflow-rabbitmq-", dir="/tmp"))
    rabbitmq = pwd.getpwnam("rabbitmq")
    node = f"taskflow-{uuid.uuid4().hex[:8]}@localhost"
    amqp_port, dist_port = free_port(), free_port()
    user, password = "taskflow", 'p"ass\\word with spaces'
    definitions_dir = base / "definitions.d"
    definitions_dir.mkdir()
    shutil.copy(DEFINITIONS_FILE, definitions_dir / "10-topology.json")
    subprocess.run(
        ["sh", str(ENTRYPOINT), "true"],
        env={
            **os.environ,
            "AMQP_USER": user,
            "AMQP_PASSWORD": password,
            "TASKFLOW_DEFINITIONS_DIR": str(definitions_dir),
        },
        check=True,
        timeout=30,
    )
    conf = RABBITMQ_CONF.read_text().replace(
        "load_definitions = /etc/rabbitmq/definitions.d", f"load_definitions = {definitions_dir}"
    )
    (base / "rabbitmq.conf").write_text(f"{conf}\nlisteners.tcp.default = {amqp_port}\n")
    (base / "enabled_plugins").write_text("[].\n")
    for path in [base, *base.rglob("*")]:
        os.chown(path, rabbitmq.pw_uid, rabbitmq.pw_gid)
    base.chmod(0o755)
    env = {
        **os.environ,
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_DIST_PORT": str(dist_port),
    }
    log = (base / "server.out").open("wb")
    server = subprocess.Popen(
        ["rabbitmq-server"], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        wait_for(
            lambda: server.poll() is not None or "Server startup complete" in read(base),
            timeout=90,
            what="the RabbitMQ node to boot",
        )
        assert server.poll() is None, read(base)
        yield {"node": node, "port": amqp_port, "user": user, "password": password}
    finally:
        subprocess.run(["rabbitmqctl", "-q", "-n", node, "stop"], timeout=60, check=False)
        try:
            server.wait(timeout=30)
        finally:
            if server.poll() is None:
                os.killpg(server.pid, 9)
            log.close()
            shutil.rmtree(base, ignore_errors=True)


def read(base: Path) -> str:
    return (base / "server.out").read_text(errors="replace")


def test_a_node_booted_like_the_compose_service_has_our_user_topology_and_policies(rabbitmq_node):
    node = rabbitmq_node["node"]
    # Only the user from the environment: no guest, since definitions are imported at boot.
    users = rabbitmqctl("list_users", "--no-table-headers", node=node)
    assert [line.split("\t")[0] for line in users.strip().splitlines()] == ["taskflow"]
    policies = rabbitmqctl("list_policies", "--no-table-headers", node=node)
    assert {line.split("\t")[1] for line in policies.strip().splitlines()} == {
        "taskflow-maintenance",
        "taskflow-work",
        "taskflow-work-lazy",
        "taskflow-deadletter",
    }
    url = broker_url(rabbitmq_node["user"], rabbitmq_node["password"], rabbitmq_node["port"], "/")
    assert_code_declares_the_same_topology(url)
    # The consumer timeout that the task time limits are checked against.
    timeout = rabbitmqctl("eval", "application:get_env(rabbit, consumer_timeout).", node=node)
    assert timeout.strip() == "{ok,1800000}"
