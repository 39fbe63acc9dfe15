"""Fixtures shared by the task tests: a staff user and an admin client logged in as them."""

from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User


@pytest.fixture
def staff(db: Any) -> User:
    return User.objects.create_superuser(email="staff@example.com", password="staff-password-1")


@pytest.fixture
def admin(staff: User) -> Client:
    client = Client()
    client.force_login(staff)
    return client
