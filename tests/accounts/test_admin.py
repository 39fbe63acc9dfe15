"""Staff's view of users: the admin's user list and its actions."""

from typing import Any

import pytest
from django.test import Client

from apps.accounts.models import User

pytestmark = [pytest.mark.django_db]

CHANGELIST = "/admin/accounts/user/"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings: Any) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def superuser() -> User:
    return User.objects.create_superuser(email="root@example.com", password="x-admin-pass-1")


@pytest.fixture
def admin(superuser: User) -> Client:
    client = Client(raise_request_exception=False)
    client.force_login(superuser)
    return client


@pytest.mark.parametrize("selected", [["abc"], ["\u00b2"], ["9" * 30], ["\x00"]])
def test_an_action_on_ids_that_are_no_user_ids_deletes_nobody(admin, user, selected):
    """An integer primary key: 'abc' in pk__in was a ValueError (a 500), like a task's
    'not-a-uuid'. The delete confirmation page lists the users it would delete: none."""
    response = admin.post(
        CHANGELIST, {"action": "delete_selected", "_selected_action": selected, "index": 0}
    )
    assert response.status_code in (200, 302), response.status_code
    assert User.objects.filter(id=user.id).exists()


def test_a_user_search_with_a_nul_character_is_400(admin, user):
    assert admin.get(CHANGELIST, {"q": "alice\x00"}).status_code == 400
    assert admin.get(CHANGELIST, {"q": "alice"}).status_code == 200
