"""The client and the CLI against the running stack: the Procfile's web, worker, worker-io and beat
processes on the test database and the run's RabbitMQ vhost, started once for tests/client.

The tests only talk HTTP to the processes, and each one registers its own user, so they share the
stack. They are marked `django_db` (CLIENT_TESTS) for pytest-django to create the test database
at all: it sets up only the databases that collected tests ask for. Not `transaction=True`: its
flush after every test would also empty beat's schedule under the running beat. The whole
database is flushed once the package is done instead, as a transactional test leaves it.
"""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.management import call_command
from django.db import connection
from django.test import override_settings

from taskflow.client import Client
from tests.support import processes
from tests.support.processes import free_port, running
from tests.support.wait import wait_for

PROCESSES = ("web", "worker", "worker-io", "beat")
CLIENT_TESTS = [pytest.mark.e2e, pytest.mark.django_db]
PASSWORD = "client-correct-horse-42"


@dataclass(frozen=True)
class Stack:
    url: str
    procs: dict[str, processes.Process]


@dataclass(frozen=True)
class Account:
    email: str
    password: str


def _health(url: str) -> int:
    try:
        return httpx.get(f"{url}/health", timeout=5).status_code
    except httpx.TransportError:
        return 0


def test_database_name() -> str:
    """The database the processes will use and the fixture flushes: the test database, or a
    refusal (never the one `make run` uses)."""
    settings_dict = connection.settings_dict
    name = str(settings_dict["NAME"])
    if name != (settings_dict.get("TEST") or {}).get("NAME") and not name.startswith("test_"):
        raise RuntimeError(
            f"The database is {name!r}, not a test database: mark the tests django_db."
        )
    return name


@pytest.fixture(scope="package")
def stack(
    django_db_setup: Any,
    django_db_blocker: Any,
    rabbitmq_vhost: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    database = test_database_name()
    env = processes.test_environment()
    assert env["DATABASE_URL"].endswith(f"/{database}")
    with django_db_blocker.unblock():
        # As `make run` does before it starts the processes: the RabbitMQ topology and beat's
        # release schedule (at the interval the processes are given).
        with override_settings(
            TASKFLOW={
                **settings.TASKFLOW,
                "RELEASE_INTERVAL_MS": int(env["RELEASE_INTERVAL_MS"]),
            }
        ):
            call_command("setup_broker", verbosity=0)
        port = free_port()
        overrides = {
            "PORT": str(port),
            "HOST": "127.0.0.1",
            "WORKER_CONCURRENCY": "2",
            "IO_WORKER_MIN": "2",
            "IO_WORKER_MAX": "4",
            "MEDIA_ROOT": str(tmp_path_factory.mktemp("media")),
            # Rate-limit counters of these processes only; the login limit per account stays at
            # its default (tests hit it on purpose), the others leave room for many test users.
            "CACHE_KEY_PREFIX": f"test-client-{uuid.uuid4().hex[:12]}",
            "LOGIN_RATE_PER_ACCOUNT": "5/min",
            "LOGIN_RATE_PER_ADDRESS": "1000/min",
            "REGISTER_RATE_PER_ADDRESS": "1000/hour",
        }
        try:
            with running(*PROCESSES, **overrides) as procs:
                url = f"http://127.0.0.1:{port}"
                wait_for(lambda: _health(url) == 200, timeout=30, what="gunicorn to answer")
                yield Stack(url=url, procs=procs)
        finally:
            if test_database_name() == database:
                call_command("flush", interactive=False, verbosity=0)


def register(url: str, email: str | None = None, password: str = PASSWORD) -> Account:
    """A new user, registered through the API as anyone would."""
    email = email or f"client-{uuid.uuid4().hex[:10]}@example.com"
    answer = httpx.post(
        f"{url}/api/register", json={"email": email, "password": password}, timeout=30
    )
    assert answer.status_code == 201, answer.text
    return Account(email=email, password=password)


@pytest.fixture
def account(stack: Stack) -> Account:
    return register(stack.url)


@pytest.fixture
def client(stack: Stack, account: Account) -> Iterator[Client]:
    with Client(stack.url, email=account.email, password=account.password) as logged_in:
        yield logged_in


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path
