"""Staff's view of users: the list, its actions, and a password or an account ended there."""

from typing import Any

import pytest
from django.test import Client
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken
from rest_framework_simplejwt.tokens import RefreshToken

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


def test_a_password_set_in_the_admin_ends_the_users_refresh_tokens(admin, user):
    """The admin's "Reset password" form: a stolen refresh token no longer refreshes."""
    stolen = str(RefreshToken.for_user(user))
    response = admin.post(
        f"{CHANGELIST}{user.id}/password/",
        {"password1": "a-brand-new-password-4711", "password2": "a-brand-new-password-4711"},
    )
    assert response.status_code == 302, response.content[:2000]
    user.refresh_from_db()
    assert user.check_password("a-brand-new-password-4711")
    refreshed = APIClient().post("/api/token/refresh", {"refresh": stolen}, format="json")
    assert refreshed.status_code == 401
    assert refreshed.json()["error"]["code"] == "token_not_valid"


def test_a_user_deactivated_in_the_admin_loses_the_refresh_tokens(admin, user):
    stolen = str(RefreshToken.for_user(user))
    page = admin.get(f"{CHANGELIST}{user.id}/change/")
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update({"email": user.email, "is_active": "", "groups": []})
    data.update(
        {
            "date_joined_0": user.date_joined.strftime("%Y-%m-%d"),
            "date_joined_1": user.date_joined.strftime("%H:%M:%S"),
        }
    )
    response = admin.post(f"{CHANGELIST}{user.id}/change/", data)
    assert response.status_code == 302, response.content[:3000]
    user.refresh_from_db()
    assert not user.is_active
    assert BlacklistedToken.objects.filter(token__token=stolen).exists()


@pytest.mark.parametrize("form", ["/admin/password_change/", "user"])
def test_staff_who_change_their_own_password_in_the_admin_stay_logged_in(admin, superuser, form):
    """The session's hash includes the token generation the change raises (a logout everywhere
    ends admin sessions too): the admin's form stores the new one, so this session goes on."""
    new = "a-brand-new-password-4711"
    if form == "user":
        url, data = f"{CHANGELIST}{superuser.id}/password/", {"password1": new, "password2": new}
    else:
        url = form
        data = {"old_password": "x-admin-pass-1", "new_password1": new, "new_password2": new}
    response = admin.post(url, data)
    assert response.status_code == 302, response.content[:2000]
    superuser.refresh_from_db()
    assert superuser.check_password(new)
    assert superuser.token_generation == 1
    assert admin.get(CHANGELIST).status_code == 200
