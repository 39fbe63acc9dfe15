"""JWT: every bad token is a 401 on every endpoint that needs a login; refresh tokens rotate and
work once; logout blacklists them.

tests/accounts/test_api.py covers each kind of bad token on /api/me; here the same kinds go to
every authenticated route the URL resolver knows.
"""

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection, connections
from rest_framework.test import APIClient
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.authentication import GenerationRefreshToken
from apps.accounts.models import User
from apps.accounts.services import user_tokens_revoke
from tests.security.support import (
    PASSWORD,
    FastPBKDF2PasswordHasher,
    Route,
    alg_none_token,
    api_routes,
    assert_error,
    expired_token,
    wrong_signature_token,
)
from tests.support.concurrency import at_once
from tests.support.wait import wait_for

AUTHENTICATED = [route for route in api_routes() if not route.public]


def deleted_user_token(user: User) -> str:
    token = str(RefreshToken.for_user(user).access_token)
    user.delete()
    return token


def deactivated_user_token(user: User) -> str:
    token = str(RefreshToken.for_user(user).access_token)
    user.is_active = False
    user.save(update_fields=["is_active"])
    return token


def refresh_as_access_token(user: User) -> str:
    return str(RefreshToken.for_user(user))


BAD_TOKENS: dict[str, Callable[[User], str]] = {
    "expired": expired_token,
    "wrong-signature": wrong_signature_token,
    "alg-none": alg_none_token,
    "deleted-user": deleted_user_token,
    "deactivated-user": deactivated_user_token,
    "refresh-as-access": refresh_as_access_token,
}


@pytest.mark.parametrize("kind", BAD_TOKENS)
@pytest.mark.parametrize("route", AUTHENTICATED, ids=str)
def test_a_bad_token_is_401_on_every_authenticated_route(user, kind, route: Route):
    token = BAD_TOKENS[kind](user)
    path = route.path(**{param: str(uuid.uuid4()) for param in route.params})
    client = APIClient()
    for method in route.methods:
        for header in (f"Bearer {token}", token):  # both forms we accept
            response = getattr(client, method)(path, {}, format="json", HTTP_AUTHORIZATION=header)
            assert response.status_code == 401, (method, path, response.content)
            assert response.json()["error"]["code"] in {
                "token_not_valid",
                "user_not_found",
                "user_inactive",
            }
            assert response["WWW-Authenticate"].startswith("Bearer")


def test_every_authenticated_route_is_covered():
    """The list above is the resolver's: the task, file and monitoring routes are all in it."""
    names = {route.name for route in AUTHENTICATED}
    assert {"task-detail", "task-list", "file-detail", "file-download", "me", "stats"} <= names
    assert "monitoring-task-detail" in names


# --- Refresh rotation and logout ------------------------------------------------------------


def login(email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, str]:
    response = APIClient().post("/api/login", {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def refresh(token: str) -> Any:
    return APIClient().post("/api/token/refresh", {"refresh": token}, format="json")


def me(access: str) -> Any:
    return APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {access}")


def test_a_refresh_answers_a_new_refresh_token_and_the_old_one_stops_working(user):
    first = login()["refresh"]
    answer = refresh(first)
    assert answer.status_code == 200, answer.content
    tokens = answer.json()
    assert set(tokens) == {"access", "refresh"}
    assert tokens["refresh"] != first
    assert me(tokens["access"]).status_code == 200

    assert_error(refresh(first), 401, "token_not_valid")  # rotated out
    second = refresh(tokens["refresh"])
    assert second.status_code == 200, second.content  # the successor works, once
    assert_error(refresh(tokens["refresh"]), 401, "token_not_valid")


def test_logout_blacklists_the_refresh_token(user):
    tokens = login()
    response = APIClient().post("/api/logout", {"refresh": tokens["refresh"]}, format="json")
    assert response.status_code == 205, response.content
    assert response.content == b""
    assert_error(refresh(tokens["refresh"]), 401, "token_not_valid")
    assert BlacklistedToken.objects.filter(token__user=user).count() == 1


def test_logout_after_a_rotation_ends_the_chain(user):
    first = login()["refresh"]
    second = refresh(first).json()["refresh"]
    assert APIClient().post("/api/logout", {"refresh": second}, format="json").status_code == 205
    assert_error(refresh(first), 401, "token_not_valid")
    assert_error(refresh(second), 401, "token_not_valid")


def test_logout_works_without_a_valid_access_token(user):
    """An app logs out when its access token has expired too: the refresh token is the proof."""
    tokens = login()
    response = APIClient().post(
        "/api/logout",
        {"refresh": tokens["refresh"]},
        format="json",
        HTTP_AUTHORIZATION=f"Bearer {expired_token(user)}",
    )
    assert response.status_code == 205, response.content


@pytest.mark.parametrize(
    "token",
    ["garbage", "a.b.c", "access", "logged-out"],
)
def test_logout_with_a_token_that_is_not_a_live_refresh_token_is_401(user, token):
    tokens = login()
    if token == "access":
        token = tokens["access"]
    elif token == "logged-out":
        client = APIClient()
        assert (
            client.post("/api/logout", {"refresh": tokens["refresh"]}, format="json").status_code
            == 205
        )
        token = tokens["refresh"]
    response = APIClient().post("/api/logout", {"refresh": token}, format="json")
    assert_error(response, 401, "token_not_valid")


@pytest.mark.django_db
def test_logout_without_a_token_is_400():
    assert_error(
        APIClient().post("/api/logout", {}, format="json"), 400, "validation_error", ("refresh",)
    )


def test_logout_of_a_deleted_users_token_is_not_a_500(user):
    token = str(RefreshToken.for_user(user))
    user.delete()
    response = APIClient().post("/api/logout", {"refresh": token}, format="json")
    assert response.status_code == 205, response.content


def test_a_deactivated_users_refresh_token_is_401_even_after_rotation(user):
    rotated = refresh(login()["refresh"]).json()["refresh"]
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert_error(refresh(rotated), 401, "token_not_valid")  # blacklisted by the deactivation


@pytest.mark.django_db(transaction=True)
def test_concurrent_refreshes_with_one_token_mint_one_successor():
    """Regression: simplejwt checks the blacklist, then adds the token to it; two refreshes at
    once both passed the check, and a stolen refresh token lived on next to the owner's."""
    user = User.objects.create_user(email="alice@example.com", password=PASSWORD)
    token = str(RefreshToken.for_user(user))
    attempts = 8
    statuses = at_once(lambda: refresh(token).status_code, attempts)
    assert Counter(statuses) == {200: 1, 401: attempts - 1}


# --- A password change or a deactivation ends the refresh tokens --------------------------------


def test_a_password_change_ends_the_refresh_tokens_issued_before_it(user):
    """Regression: a stolen refresh token kept rotating (7 days at a time) after the victim's
    password was reset: nothing tied a token to the password."""
    stolen, other_device = login()["refresh"], login()["refresh"]
    rotated = refresh(login()["refresh"]).json()["refresh"]
    user.set_password("a-brand-new-password-4711")
    user.save()  # what the admin's password form and `manage.py changepassword` do
    for token in (stolen, other_device, rotated):
        assert_error(refresh(token), 401, "token_not_valid")
    assert refresh(login(password="a-brand-new-password-4711")["refresh"]).status_code == 200


def test_access_tokens_issued_before_a_password_change_are_refused_at_once(user):
    """Regression: a stolen access token kept working for up to 15 minutes after the victim's
    password was reset. The change raises the user's token generation (the cached row carries
    it); a login right after the change, in the same second, gets a token that works."""
    access = login()["access"]
    assert me(access).status_code == 200  # the user is cached now
    user.set_password("a-brand-new-password-4711")
    user.save(update_fields=["password"])

    assert_error(me(access), 401, "token_not_valid")
    assert me(login(password="a-brand-new-password-4711")["access"]).status_code == 200


def deactivate_then_reactivate(user: User) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])
    user.is_active = True
    user.save(update_fields=["is_active"])


def test_access_tokens_issued_before_a_deactivation_stay_refused_after_reactivation(user):
    access = login()["access"]
    deactivate_then_reactivate(user)

    assert_error(me(access), 401, "token_not_valid")
    assert me(login()["access"]).status_code == 200


def test_a_hash_upgrade_or_another_change_keeps_the_access_tokens(user, settings):
    access = login()["access"]
    user.is_staff = True
    user.save()
    settings.PASSWORD_HASHERS = [f"{__name__}.SlowerPBKDF2PasswordHasher"]
    login()  # re-hashes the same password
    assert me(access).status_code == 200


def test_a_later_save_of_a_user_object_read_before_a_password_change_keeps_old_tokens_out(user):
    """Regression: the change raised the generation with an UPDATE the saved object never saw,
    so its next full save (or that of an object read before, as in a second admin's form) wrote
    the old generation back, and every access token issued before the change worked again."""
    access = login()["access"]
    user.set_password("a-brand-new-password-4711")
    user.save()
    assert_error(me(access), 401, "token_not_valid")

    user.is_staff = True
    user.save()  # the same object, after the change
    assert_error(me(access), 401, "token_not_valid")
    assert me(login_with("a-brand-new-password-4711")["access"]).status_code == 200


def test_a_save_of_a_user_object_read_before_a_deactivation_keeps_old_tokens_out(user):
    access = login()["access"]
    other_form = User.objects.get(pk=user.pk)  # another admin's, read before the deactivation
    user.is_active = False
    user.save(update_fields=["is_active"])
    other_form.is_staff = True
    other_form.save()  # active again (its `is_active`), but not the sessions the change ended
    assert_error(me(access), 401, "token_not_valid")
    assert me(login()["access"]).status_code == 200


def login_with(password: str) -> dict[str, str]:
    response = APIClient().post(
        "/api/login", {"email": "alice@example.com", "password": password}, format="json"
    )
    assert response.status_code == 200, response.content
    return response.json()


def test_an_unusable_password_ends_the_refresh_tokens_too(user):
    token = login()["refresh"]
    user.set_unusable_password()
    user.save()
    assert_error(refresh(token), 401, "token_not_valid")


def test_a_deactivation_ends_the_refresh_tokens_for_good(user):
    """Blacklisted, not only refused while inactive: reactivating the account does not bring the
    sessions back."""
    token = login()["refresh"]
    deactivate_then_reactivate(user)
    assert_error(refresh(token), 401, "token_not_valid")


def test_other_changes_to_the_user_keep_the_refresh_tokens(user):
    token = login()["refresh"]
    user.is_staff = True
    user.save()
    user.refresh_from_db()
    user.save()  # the same password hash
    User.objects.get(pk=user.pk).save(update_fields=["email"])
    assert refresh(token).status_code == 200
    # Only the one used, blacklisted by its rotation.
    assert list(BlacklistedToken.objects.values_list("token__token", flat=True)) == [token]


class SlowerPBKDF2PasswordHasher(FastPBKDF2PasswordHasher):
    iterations = 2


def test_an_unusable_password_saved_alone_over_an_outdated_hash_ends_the_sessions(user, settings):
    """Regression: a password saved alone over a hash the preferred hasher would upgrade was
    taken for Django's upgrade at a login, whatever the new hash: an account locked with
    set_unusable_password() (after a Django upgrade raised PBKDF2's iterations) kept its
    sessions."""
    tokens = login()
    settings.PASSWORD_HASHERS = [f"{__name__}.SlowerPBKDF2PasswordHasher"]  # an upgrade
    user.set_unusable_password()
    user.save(update_fields=["password"])
    assert_error(refresh(tokens["refresh"]), 401, "token_not_valid")
    assert_error(me(tokens["access"]), 401, "token_not_valid")


def test_a_hash_upgrade_at_login_is_no_password_change(user, settings):
    """Django re-hashes the right password at a login when the hasher's iterations changed (each
    Django release raises PBKDF2's): the same password, so the other devices stay logged in."""
    other_device = login()["refresh"]
    settings.PASSWORD_HASHERS = [f"{__name__}.SlowerPBKDF2PasswordHasher"]
    before = User.objects.get(pk=user.pk).password
    login()
    assert User.objects.get(pk=user.pk).password != before  # upgraded
    assert refresh(other_device).status_code == 200


def refresh_running_this_meanwhile(
    monkeypatch: Any, token: str, action: Callable[[], object]
) -> Any:
    """Refresh `token`; once the refresh has minted its successor, and before it commits, start
    `action` in another thread, on a connection of its own, and let the refresh go on when the
    action waits on a lock or has ended. The refresh's answer."""
    real_outstand = RefreshToken.outstand
    act = in_another_thread(action)

    def outstand_then_act(self: RefreshToken) -> Any:
        minted = real_outstand(self)
        act.start_and_wait()
        return minted

    with monkeypatch.context() as patched:
        patched.setattr(RefreshToken, "outstand", outstand_then_act)
        answer = refresh(token)
    act.join()
    return answer


def login_running_this_meanwhile(
    monkeypatch: Any, password: str, action: Callable[[], object]
) -> Any:
    """Log in; once the login has checked the password, and before it mints its refresh token,
    start `action` as above. The login's answer."""
    real_for_user = GenerationRefreshToken.for_user
    act = in_another_thread(action)

    def act_then_mint(cls: type[RefreshToken], user: User) -> RefreshToken:
        act.start_and_wait()
        return real_for_user(user)

    with monkeypatch.context() as patched:
        patched.setattr(GenerationRefreshToken, "for_user", classmethod(act_then_mint))
        answer = APIClient().post(
            "/api/login", {"email": "alice@example.com", "password": password}, format="json"
        )
    act.join()
    return answer


class in_another_thread:
    """`action` in a thread on a connection of its own: start it, and wait until it waits on a
    lock (in PostgreSQL) or has ended."""

    def __init__(self, action: Callable[[], object]) -> None:
        self.ended: list[BaseException | None] = []
        self.thread = threading.Thread(target=self._run, args=(action,))

    def _run(self, action: Callable[[], object]) -> None:
        try:
            action()
            self.ended.append(None)
        except BaseException as exc:
            self.ended.append(exc)
        finally:
            connections.close_all()

    def _waits_on_a_lock(self) -> bool:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")  # else kept for the transaction
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            row = cursor.fetchone()
        return bool(row and row[0]) or bool(self.ended)

    def start_and_wait(self) -> None:
        self.thread.start()
        wait_for(self._waits_on_a_lock, timeout=10, what="the action to wait on a lock or end")

    def join(self) -> None:
        self.thread.join(timeout=30)
        assert self.ended == [None], self.ended


@pytest.mark.django_db(transaction=True)
def test_a_password_change_during_a_refresh_ends_the_token_that_refresh_mints(monkeypatch):
    """A refresh that has minted its successor but not committed yet, while the password changes:
    the change waits for it (the refresh holds the user's row), then finds the successor and
    blacklists it. Without that, the blacklisting missed the uncommitted successor."""
    user = User.objects.create_user(email="alice@example.com", password=PASSWORD)

    def change_password() -> None:
        victim = User.objects.get(pk=user.pk)
        victim.set_password("a-brand-new-password-4711")
        victim.save()

    stolen = str(RefreshToken.for_user(user))
    answer = refresh_running_this_meanwhile(monkeypatch, stolen, change_password)
    assert answer.status_code == 200, answer.content  # it came first
    assert_error(refresh(answer.json()["refresh"]), 401, "token_not_valid")


@pytest.mark.django_db(transaction=True)
def test_the_blacklisting_waits_for_a_refresh_under_way_even_after_the_change_committed(
    monkeypatch,
):
    """A revocation called on its own, not in a save's transaction: a refresh can start before
    it. The blacklisting locks the user's row too, so it still sees that refresh's successor."""
    user = User.objects.create_user(email="alice@example.com", password=PASSWORD)
    token = str(RefreshToken.for_user(user))

    answer = refresh_running_this_meanwhile(
        monkeypatch, token, lambda: user_tokens_revoke(user_id=user.pk)
    )
    assert answer.status_code == 200, answer.content
    assert_error(refresh(answer.json()["refresh"]), 401, "token_not_valid")


@pytest.mark.django_db(transaction=True)
def test_a_password_change_during_a_login_ends_the_token_that_login_mints(monkeypatch):
    """A login that has checked the old password, and not yet minted its refresh token, while
    the password changes: the change waits for the login (which holds the user's row from before
    its password check), then blacklists that token. Without the lock, the change blacklisted the
    tokens it found, and the login's, minted right after, lived on (7 days, rotating)."""
    user = User.objects.create_user(email="alice@example.com", password=PASSWORD)

    def change_password() -> None:
        victim = User.objects.get(pk=user.pk)
        victim.set_password("a-brand-new-password-4711")
        victim.save()

    answer = login_running_this_meanwhile(monkeypatch, PASSWORD, change_password)
    assert answer.status_code == 200, answer.content  # it came first
    assert_error(refresh(answer.json()["refresh"]), 401, "token_not_valid")


@pytest.mark.django_db(transaction=True)
def test_a_password_saved_outside_a_transaction_is_revealed_with_its_revocation(monkeypatch):
    """`manage.py changepassword` saves outside any transaction. Its new password must not be
    visible to a login before the revocation commits with it: a login in between got tokens
    that the revocation then ended."""
    from apps.accounts import signals

    user = User.objects.create_user(email="alice@example.com", password=PASSWORD)
    old_hash = user.password
    seen_by_others: list[str] = []
    revoke = signals.user_tokens_revoke

    def read_elsewhere() -> None:
        try:
            seen_by_others.append(User.objects.values_list("password", flat=True).get(pk=user.pk))
        finally:
            connection.close()

    def revoke_after_looking(*, user_id: int) -> int:
        reader = threading.Thread(target=read_elsewhere)
        reader.start()
        reader.join(timeout=30)
        return revoke(user_id=user_id)

    monkeypatch.setattr(signals, "user_tokens_revoke", revoke_after_looking)
    user.set_password("a-brand-new-password-4711")
    user.save()  # what `manage.py changepassword` does, in autocommit

    assert seen_by_others == [old_hash]
    assert User.objects.get(pk=user.pk).check_password("a-brand-new-password-4711")
