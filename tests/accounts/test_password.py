"""A user changes their own password (POST /api/password) or ends all their sessions
(POST /api/logout/all), over the API: every other session ends at once, access and refresh tokens
alike; a password change keeps the caller logged in with the new pair it answers."""

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client as DjangoClient
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken

from apps.accounts.authentication import TOKEN_GENERATION_CLAIM
from apps.accounts.models import User
from tests.security.support import PASSWORD, assert_error
from tests.support.concurrency import at_once

NEW_PASSWORD = "a-brand-new-password-4711"


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    """PBKDF2 with few iterations: these tests hash and check many passwords."""
    settings.PASSWORD_HASHERS = ["tests.security.support.FastPBKDF2PasswordHasher"]


@pytest.fixture
def rates(settings: Any) -> Callable[..., None]:
    """Set rate limits for this test only: rates(password_change="3/min")."""

    def set_rates(**scopes: str | None) -> None:
        framework = settings.REST_FRAMEWORK
        settings.REST_FRAMEWORK = {
            **framework,
            "DEFAULT_THROTTLE_RATES": {**framework["DEFAULT_THROTTLE_RATES"], **scopes},
        }

    return set_rates


def login(email: str = "alice@example.com", password: str = PASSWORD) -> dict[str, str]:
    response = APIClient().post("/api/login", {"email": email, "password": password}, format="json")
    assert response.status_code == 200, response.content
    return response.json()


def login_status(password: str, email: str = "alice@example.com") -> int:
    response = APIClient().post("/api/login", {"email": email, "password": password}, format="json")
    return response.status_code


def refresh(token: str) -> Any:
    return APIClient().post("/api/token/refresh", {"refresh": token}, format="json")


def me(access: str) -> Any:
    return APIClient().get("/api/me", HTTP_AUTHORIZATION=f"Bearer {access}")


def change(access: str | None, body: Any, **extra: Any) -> Any:
    client = APIClient()
    if access is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    return client.post("/api/password", body, format="json", **extra)


def change_body(current: str = PASSWORD, new: str = NEW_PASSWORD) -> dict[str, str]:
    return {"current_password": current, "new_password": new}


def logout_all(access: str | None, body: Any = None) -> Any:
    client = APIClient()
    if access is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {access}")
    if body is None:
        return client.post("/api/logout/all")
    return client.post("/api/logout/all", body, format="json")


def assert_session_works(tokens: dict[str, str]) -> None:
    """Both tokens of a login still work (the refresh rotates it: use the answer's after)."""
    assert me(tokens["access"]).status_code == 200
    answer = refresh(tokens["refresh"])
    assert answer.status_code == 200, answer.content


def assert_session_ended(tokens: dict[str, str]) -> None:
    assert_error(me(tokens["access"]), 401, "token_not_valid")
    assert_error(refresh(tokens["refresh"]), 401, "token_not_valid")


# --- POST /api/password --------------------------------------------------------------------------


def test_a_password_change_sets_the_new_password(user):
    tokens = login()
    response = change(tokens["access"], change_body())
    assert response.status_code == 200, response.content
    assert login_status(PASSWORD) == 401
    assert login_status(NEW_PASSWORD) == 200
    user.refresh_from_db()
    assert user.check_password(NEW_PASSWORD)


def test_a_password_change_ends_every_other_session_at_once(user):
    """The thief's access token (cached as the user already) and refresh token, a rotated one,
    and the caller's own old pair: all refused right after the change."""
    stolen, caller = login(), login()
    rotated = refresh(login()["refresh"]).json()
    assert me(stolen["access"]).status_code == 200  # the user is cached now

    assert change(caller["access"], change_body()).status_code == 200

    for tokens in (stolen, rotated, caller):
        assert_session_ended(tokens)


def test_a_password_change_answers_a_new_pair_that_works(user):
    tokens = login()
    response = change(tokens["access"], change_body())
    assert response.status_code == 200, response.content
    pair = response.json()
    assert set(pair) == {"refresh", "access"}
    user.refresh_from_db()
    # Minted after the revocation, with the generation it raised.
    assert AccessToken(pair["access"])[TOKEN_GENERATION_CLAIM] == user.token_generation > 0
    assert me(pair["access"]).json()["email"] == "alice@example.com"
    rotated = refresh(pair["refresh"])
    assert rotated.status_code == 200, rotated.content  # not blacklisted with the others
    assert me(rotated.json()["access"]).status_code == 200


def test_a_second_change_with_the_new_pair_works_and_ends_the_first_pair(user):
    first = change(login()["access"], change_body()).json()
    second = change(first["access"], change_body(NEW_PASSWORD, "yet-another-passphrase-99"))
    assert second.status_code == 200, second.content
    assert_session_ended(first)
    assert_session_works(second.json())
    assert login_status("yet-another-passphrase-99") == 200


def test_a_wrong_current_password_is_400_on_that_field_and_changes_nothing(user):
    other_device, caller = login(), login()
    generation = User.objects.get(pk=user.pk).token_generation

    response = change(caller["access"], change_body(current="not-my-password"))

    error = assert_error(response, 400, "wrong_password", fields=("current_password",))
    assert error["fields"]["current_password"] == ["The current password is wrong."]
    assert set(error["fields"]) == {"current_password"}
    assert login_status(PASSWORD) == 200
    assert login_status(NEW_PASSWORD) == 401
    assert User.objects.get(pk=user.pk).token_generation == generation
    assert_session_works(other_device)
    assert_session_works(caller)


@pytest.mark.parametrize(
    "new",
    ["short", "password123", "12345678901", "alice@example.com"],
    ids=["too-short", "common", "numeric", "same-as-email"],
)
def test_a_weak_new_password_is_400_on_that_field_and_changes_nothing(user, new):
    caller = login()
    response = change(caller["access"], change_body(new=new))
    error = assert_error(response, 400, "weak_password", fields=("new_password",))
    assert error["fields"]["new_password"]
    assert all(isinstance(message, str) for message in error["fields"]["new_password"])
    assert login_status(PASSWORD) == 200
    assert_session_works(caller)


def test_the_similarity_check_knows_the_user(user):
    """Validated with the user: a password like the user's own email is refused."""
    response = change(login()["access"], change_body(new="alice.example.com"))
    error = assert_error(response, 400, "weak_password", fields=("new_password",))
    assert any("similar" in message for message in error["fields"]["new_password"]), error


def test_a_wrong_current_password_is_reported_before_a_weak_new_one(user):
    """A thief who does not know the password learns nothing about the password rules' verdict
    on the new one, and the error names the field to fix first."""
    response = change(login()["access"], change_body(current="wrong-one", new="short"))
    error = assert_error(response, 400, "wrong_password", fields=("current_password",))
    assert "new_password" not in error["fields"]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({**change_body(), "remember_me": True}, "remember_me", "Unknown field."),
        (change_body() | {"current_password": 31415926}, "current_password", "Must be a string"),
        (change_body() | {"new_password": 27182818284}, "new_password", "Must be a string"),
        ({"current_password": PASSWORD}, "new_password", "This field is required."),
        ({"new_password": NEW_PASSWORD}, "current_password", "This field is required."),
        (change_body(new="x" * 129), "new_password", "no more than 128 characters"),
    ],
    ids=["unknown-field", "number-current", "number-new", "no-new", "no-current", "too-long"],
)
def test_bad_input_is_400_naming_the_field(user, body, field, message):
    caller = login()
    error = assert_error(change(caller["access"], body), 400, "validation_error", fields=(field,))
    assert error["fields"][field][0].startswith(message) or message in error["fields"][field][0]
    assert login_status(PASSWORD) == 200
    assert_session_works(caller)


def test_whitespace_in_a_password_is_kept(user):
    """Not trimmed: a password that ends in a space is that password (as at login)."""
    spaced = f" {NEW_PASSWORD} "
    assert change(login()["access"], change_body(new=spaced)).status_code == 200
    assert login_status(spaced) == 200
    assert login_status(NEW_PASSWORD) == 401


@pytest.mark.django_db
def test_a_password_change_without_an_access_token_is_401():
    assert_error(change(None, change_body()), 401, "not_authenticated")


def test_a_password_change_with_a_refresh_token_as_access_is_401(user):
    assert_error(change(login()["refresh"], change_body()), 401, "token_not_valid")
    assert login_status(PASSWORD) == 200


def test_a_password_change_takes_an_access_token_not_an_admin_session(user):
    """The answer is a token pair and what it ends are token sessions: a browser's admin session
    is not a way in (nor a way around CSRF)."""
    browser = DjangoClient(enforce_csrf_checks=False)
    browser.force_login(user)
    response = browser.post("/api/password", change_body(), content_type="application/json")
    assert_error(response, 401, "not_authenticated")
    assert login_status(PASSWORD) == 200


def test_a_password_change_ends_an_admin_session_too(user):
    browser = DjangoClient()
    browser.force_login(user)
    assert change(login()["access"], change_body()).status_code == 200
    browser.get("/admin/")  # Django checks the session's password hash
    assert SESSION_KEY not in browser.session


# --- The rate limit ------------------------------------------------------------------------------


def test_password_change_attempts_are_limited_per_user_right_or_wrong(user, other_user, rates):
    rates(password_change="3/min")
    access = login()["access"]
    for _ in range(3):
        assert_error(change(access, change_body(current="guess")), 400, "wrong_password")
    # The fourth attempt is refused before the password is looked at, even the right one.
    response = change(access, change_body())
    error = assert_error(response, 429, "throttled")
    assert error["retry_after"] == int(response["Retry-After"])
    assert 1 <= error["retry_after"] <= 2 * 60
    assert login_status(PASSWORD) == 200  # unchanged

    # Per user, whatever the token: a new login of the same user is limited too; another user is
    # not.
    assert_error(change(login()["access"], change_body()), 429, "throttled")
    bob = login("bob@example.com")
    assert change(bob["access"], change_body()).status_code == 200


def test_a_request_the_user_rate_refuses_uses_no_password_attempt(user, rates):
    rates(password_change="2/hour", user="1/min")
    access = login()["access"]
    assert_error(change(access, change_body(current="guess")), 400, "wrong_password")
    assert_error(change(access, change_body(current="guess")), 429, "throttled")  # user rate
    rates(password_change="2/hour", user="")
    # The refused request was not a password attempt: one of the two is left.
    assert_error(change(access, change_body(current="guess")), 400, "wrong_password")
    assert_error(change(access, change_body(current="guess")), 429, "throttled")


@pytest.mark.django_db(transaction=True)
def test_concurrent_guesses_pass_the_limit_no_faster(rates):
    """Every attempt counts as it arrives (one INCR): guesses sent all at once are limited as well
    as guesses sent one by one."""
    rates(password_change="3/min")
    User.objects.create_user(email="alice@example.com", password=PASSWORD)
    access = login()["access"]

    def guess() -> int:
        return int(change(access, change_body(current="guess")).status_code)

    assert Counter(at_once(guess, 10)) == {400: 3, 429: 7}


@pytest.mark.django_db(transaction=True)
def test_concurrent_changes_with_the_same_current_password_let_one_through(rates):
    """The user's row is locked from the check of the current password to the new tokens: a second
    change waits, then finds the current password changed."""
    rates(password_change="100/min")
    User.objects.create_user(email="alice@example.com", password=PASSWORD)
    access = login()["access"]
    answers: list[Any] = []

    def attempt() -> int:
        answer = change(access, change_body())
        answers.append(answer)
        return int(answer.status_code)

    statuses = at_once(attempt, 4)
    assert Counter(statuses)[200] == 1, [a.content for a in answers]
    for answer in answers:
        if answer.status_code != 200:
            # Waited for the winner: its current password is no longer the password, or its own
            # access token was ended by the change.
            assert answer.status_code in (400, 401), answer.content
    winner = next(a.json() for a in answers if a.status_code == 200)
    assert_session_works(winner)
    assert login_status(NEW_PASSWORD) == 200


# --- POST /api/logout/all ------------------------------------------------------------------------


def test_logout_all_ends_every_session_this_one_included(user, other_user):
    other_device, caller = login(), login()
    rotated = refresh(login()["refresh"]).json()
    bob = login("bob@example.com")
    assert me(caller["access"]).status_code == 200  # the user is cached now

    response = logout_all(caller["access"])

    assert response.status_code == 205, response.content
    assert response.content == b""
    for tokens in (caller, other_device, rotated):
        assert_session_ended(tokens)
    assert_session_works(bob)  # another user's are not touched
    assert login_status(PASSWORD) == 200  # the password stays
    assert_session_works(login())


def test_logout_all_ends_an_admin_session_too(user):
    """A browser logged in to the admin is a session of the user (the API takes it too): a stolen
    session cookie must not outlive a logout everywhere, as it does not outlive a new password."""
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    browser = DjangoClient()
    browser.force_login(user)
    assert browser.get("/api/me").status_code == 200

    assert logout_all(login()["access"]).status_code == 205

    assert browser.get("/api/me").status_code in (401, 403)
    assert SESSION_KEY not in browser.session


def test_logout_all_takes_an_empty_json_object_too(user):
    caller = login()
    assert logout_all(caller["access"], {}).status_code == 205
    assert_session_ended(caller)


def test_logout_all_with_an_unknown_field_is_400_and_ends_nothing(user):
    caller = login()
    error = assert_error(
        logout_all(caller["access"], {"refresh": caller["refresh"]}),
        400,
        "validation_error",
        fields=("refresh",),
    )
    assert error["fields"]["refresh"] == ["Unknown field. This takes no fields."]
    assert_session_works(caller)


@pytest.mark.django_db
def test_logout_all_without_an_access_token_is_401():
    assert_error(logout_all(None), 401, "not_authenticated")


def test_logout_all_with_a_refresh_token_as_access_is_401_and_ends_nothing(user):
    caller = login()
    assert_error(logout_all(caller["refresh"]), 401, "token_not_valid")
    assert_session_works(caller)


def test_logout_all_twice_with_the_same_access_token_is_401_the_second_time(user):
    caller = login()
    assert logout_all(caller["access"]).status_code == 205
    assert_error(logout_all(caller["access"]), 401, "token_not_valid")
