"""Fixtures shared by the task tests: a staff user and an admin client logged in as them, and
a RabbitMQ vhost of a test's own."""

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User
from tests.support.broker import rabbitmqctl, use_broker, vhost_url


@pytest.fixture
def staff(db: Any) -> User:
    return User.objects.create_superuser(email="staff@example.com", password="staff-password-1")


@pytest.fixture
def admin(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client


@pytest.fixture
def fresh_vhost(rabbitmq_vhost: str, db: Any) -> Iterator[str]:
    """A vhost of the test's own, empty (nothing declared, no policy), with the Celery app
    pointed at it; the session's vhost is left as it was."""
    vhost = f"taskflow-fresh-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    use_broker(vhost_url(rabbitmq_vhost, vhost))
    try:
        yield vhost
    finally:
        use_broker(rabbitmq_vhost)
        rabbitmqctl("delete_vhost", vhost)
