"""Test fixtures. The suite talks to the real PostgreSQL, RabbitMQ and Redis.

Each run gets its own RabbitMQ virtual host, so queues never mix with `make run` or another run;
each test its own cache key prefix in Redis, so cached answers and rate-limit counters never carry
over from one test (or run) to the next.
"""

import subprocess
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from django.conf import settings
from rest_framework.test import APIClient

import tests.support.handlers  # noqa: F401  (registers the test-only task types)
from apps.accounts.authentication import GenerationRefreshToken
from apps.accounts.models import User
from apps.core.throttling import breaker, local_counts
from tests.support.broker import BrokerProbe, use_broker
from tests.support.processes import stop_leftovers


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session", autouse=True)
def rabbitmq_vhost() -> Iterator[str]:
    vhost = f"taskflow-test-{uuid.uuid4().hex[:10]}"
    _rabbitmqctl("add_vhost", vhost)
    _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    url = urlparse(settings.CELERY_BROKER_URL)._replace(path=f"/{vhost}").geturl()
    settings.CELERY_BROKER_URL = url
    use_broker(url)
    try:
        yield url
    finally:
        left = stop_leftovers()
        if left:
            print(f"\nStopped processes that tests left running: {', '.join(left)}")
        use_broker(url)  # closes every connection before the vhost goes
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(autouse=True)
def fast_retries(settings: Any) -> None:
    settings.TASKFLOW = {
        **settings.TASKFLOW,
        "RETRY_BACKOFF_BASE_SECONDS": 0.01,
        "RETRY_BACKOFF_CAP_SECONDS": 0.05,
    }


@pytest.fixture(autouse=True)
def isolated_cache(settings: Any) -> None:
    """A new cache namespace per test (the processes a test starts get it too, through
    tests.support.processes.test_environment): no rate-limit count, no cached answer is left from
    an earlier test or from another run on the same Redis."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "KEY_PREFIX": f"test-{uuid.uuid4().hex[:12]}"},
    }
    breaker.reset()  # a test that stopped Redis does not leave Redis unasked
    local_counts.clear()  # nor the counts this process made meanwhile


@pytest.fixture
def broker(rabbitmq_vhost: str) -> Iterator[BrokerProbe]:
    """Look into the test vhost's queues, and purge them before and after the test."""
    probe = BrokerProbe(rabbitmq_vhost)
    probe.purge_all()
    yield probe
    probe.purge_all()
    probe.close()


@pytest.fixture
def user(db: Any) -> User:
    return User.objects.create_user(email="alice@example.com", password="correct-horse-battery")


@pytest.fixture
def other_user(db: Any) -> User:
    return User.objects.create_user(email="bob@example.com", password="correct-horse-battery")


def client_for(user: User) -> APIClient:
    client = APIClient()
    # As a login makes it: with the user's token generation as the database has it now.
    token = GenerationRefreshToken.for_user(User.objects.get(pk=user.pk))
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.access_token}")
    return client


@pytest.fixture
def api(user: User) -> APIClient:
    return client_for(user)


@pytest.fixture
def other_api(other_user: User) -> APIClient:
    return client_for(other_user)


@pytest.fixture
def anon() -> APIClient:
    return APIClient()
