"""Accounts API: register, log in, refresh, who-am-I, and every way a token can be bad."""

import base64
import json
import uuid
from datetime import timedelta
from typing import Any

import jwt
import pytest
from django.conf import settings
from django.utils import timezone
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.models import User

PASSWORD = "correct-horse-battery"


def assert_error(response: Any, status: int, code: str, fields: tuple[str, ...] = ()) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert {"code", "message", "fields"} <= set(error)
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    for field in fields:
        assert field in error["fields"], error
    return error


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(user: User, **overrides: Any) -> dict[str, Any]:
    """The claims simplejwt puts in an access token."""
    now = timezone.now()
    return {
        "token_type": "access",
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "iat": int(now.timestamp()),
        "jti": uuid.uuid4().hex,
        "user_id": str(user.id),
        **overrides,
    }


def signed(payload: dict[str, Any], key: str | None = None, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key or settings.SIMPLE_JWT["SIGNING_KEY"], algorithm=algorithm)


def me(token: str, *, bearer: bool = True) -> Any:
    header = f"Bearer {token}" if bearer else token
    return APIClient().get("/api/me", HTTP_AUTHORIZATION=header)


# --- Register --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_register_creates_a_user():
    response = APIClient().post(
        "/api/register", {"email": "carol@example.com", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["email"] == "carol@example.com"
    assert body["is_staff"] is False
    assert "password" not in body
    user = User.objects.get(email="carol@example.com")
    assert body["id"] == user.id
    assert user.check_password(PASSWORD)


@pytest.mark.django_db
def test_register_lowercases_the_email():
    response = APIClient().post(
        "/api/register", {"email": "Carol@Example.COM", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["email"] == "carol@example.com"


@pytest.mark.parametrize("email", ["alice@example.com", "ALICE@example.com"])
def test_register_a_taken_email_is_400_on_the_email_field(user, email):
    response = APIClient().post(
        "/api/register", {"email": email, "password": PASSWORD}, format="json"
    )
    assert_error(response, 400, "email_taken", fields=("email",))
    assert User.objects.filter(email__iexact="alice@example.com").count() == 1


@pytest.mark.django_db
@pytest.mark.parametrize(
    "password",
    ["short", "password123", "12345678901", "carol@example.com"],
    ids=["too-short", "common", "numeric", "same-as-email"],
)
def test_register_a_weak_password_is_400_on_the_password_field(password):
    response = APIClient().post(
        "/api/register", {"email": "carol@example.com", "password": password}, format="json"
    )
    error = assert_error(response, 400, "weak_password", fields=("password",))
    assert error["fields"]["password"]
    assert not User.objects.filter(email="carol@example.com").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("email", ["not-an-email", "carol@", "@example.com", ""])
def test_register_a_malformed_email_is_400(email):
    response = APIClient().post(
        "/api/register", {"email": email, "password": PASSWORD}, format="json"
    )
    assert_error(response, 400, "validation_error", fields=("email",))
    assert not User.objects.exists()


@pytest.mark.django_db
def test_register_an_email_too_long_once_lowercased_is_400_on_the_email_field():
    """'İ' (U+0130) lowercases to two characters ('i' and U+0307): a 197-character address passes
    the serializer's 254, but is 386 lowercased, as it would be stored (varchar(254)). It was a
    DataError, a 500."""
    label = "\u0130" * 63
    email = f"a@{label}.{label}.{label}.com"
    assert len(email) <= 254 < len(email.lower())
    client = APIClient()
    client.raise_request_exception = False
    response = client.post("/api/register", {"email": email, "password": PASSWORD}, format="json")
    error = assert_error(response, 400, "validation_error", fields=("email",))
    assert "254" in error["fields"]["email"][0]
    assert not User.objects.exists()


@pytest.mark.django_db
def test_register_an_email_of_254_characters_once_lowercased_is_taken():
    email = "a@" + "\u0130" * 63 + "." + "b" * 63 + "." + "c" * 57 + ".com"  # 254 lowercased
    assert len(email.lower()) == 254
    response = APIClient().post(
        "/api/register", {"email": email, "password": PASSWORD}, format="json"
    )
    assert response.status_code == 201, response.content
    assert User.objects.get().email == email.lower()


@pytest.mark.django_db
def test_register_missing_fields_are_named():
    response = APIClient().post("/api/register", {}, format="json")
    error = assert_error(response, 400, "validation_error", fields=("email", "password"))
    assert error["message"].startswith("Invalid input:")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/api/register", {"email": "new@example.com", "password": PASSWORD}),
        ("/api/login", {"email": "alice@example.com", "password": PASSWORD}),
        ("/api/token/refresh", {"refresh": "x"}),
        ("/api/logout", {"refresh": "x"}),
    ],
    ids=["register", "login", "refresh", "logout"],
)
def test_an_unknown_field_is_400_named_not_ignored(user, path, extra):
    # A client's misspelt or unsupported field ("remember_me", "access") must not pass unseen.
    response = APIClient().post(path, {**extra, "remember_me": True}, format="json")
    error = assert_error(response, 400, "validation_error", fields=("remember_me",))
    assert error["fields"]["remember_me"][0].startswith("Unknown field. Known fields: ")
    assert not User.objects.filter(email="new@example.com").exists()


@pytest.mark.django_db
def test_register_a_password_that_is_a_json_number_is_400_not_turned_into_text():
    response = APIClient().post(
        "/api/register", {"email": "new@example.com", "password": 31415926535}, format="json"
    )
    error = assert_error(response, 400, "validation_error", fields=("password",))
    assert error["fields"]["password"] == ["Must be a string, not a number."]
    assert not User.objects.filter(email="new@example.com").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("field", ["email", "password"])
def test_login_with_a_number_for_a_string_is_400_on_the_field(user, field):
    body = {"email": "alice@example.com", "password": PASSWORD, field: 12345678}
    response = APIClient().post("/api/login", body, format="json")
    error = assert_error(response, 400, "validation_error", fields=(field,))
    assert error["fields"][field] == ["Must be a string, not a number."]


@pytest.mark.django_db
def test_register_with_a_malformed_json_body_is_400():
    response = APIClient().post(
        "/api/register", '{"email": "x@example.com",', content_type="application/json"
    )
    assert_error(response, 400, "malformed_request")


@pytest.mark.django_db
def test_register_ignores_a_broken_authorization_header():
    response = APIClient().post(
        "/api/register",
        {"email": "carol@example.com", "password": PASSWORD},
        format="json",
        HTTP_AUTHORIZATION="Bearer not-a-token",
    )
    assert response.status_code == 201


# --- Login and refresh -----------------------------------------------------------------------


def test_login_returns_an_access_and_a_refresh_token_that_work(user):
    response = APIClient().post(
        "/api/login", {"email": "alice@example.com", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    tokens = response.json()
    assert set(tokens) >= {"access", "refresh"}
    answer = me(tokens["access"])
    assert answer.status_code == 200
    assert answer.json()["email"] == "alice@example.com"


def test_login_is_case_insensitive_on_the_email(user):
    """Regression: registering lowercases the email, so logging in must too."""
    response = APIClient().post(
        "/api/login", {"email": "Alice@Example.com", "password": PASSWORD}, format="json"
    )
    assert response.status_code == 200, response.content
    assert me(response.json()["access"]).json()["id"] == user.id


@pytest.mark.parametrize(
    ("email", "password"),
    [("alice@example.com", "wrong-password"), ("nobody@example.com", PASSWORD)],
    ids=["wrong-password", "unknown-email"],
)
def test_login_with_bad_credentials_is_401(user, email, password):
    response = APIClient().post("/api/login", {"email": email, "password": password}, format="json")
    error = assert_error(response, 401, "authentication_failed")
    assert error["message"] == "Wrong email or password."


def test_login_of_a_deactivated_user_is_401(user):
    user.is_active = False
    user.save(update_fields=["is_active"])
    response = APIClient().post(
        "/api/login", {"email": "alice@example.com", "password": PASSWORD}, format="json"
    )
    assert_error(response, 401, "authentication_failed")


@pytest.mark.django_db
def test_login_without_a_password_is_400():
    response = APIClient().post("/api/login", {"email": "alice@example.com"}, format="json")
    assert_error(response, 400, "validation_error", fields=("password",))


def test_refresh_returns_a_new_working_access_token(user):
    refresh = RefreshToken.for_user(user)
    response = APIClient().post("/api/token/refresh", {"refresh": str(refresh)}, format="json")
    assert response.status_code == 200, response.content
    access = response.json()["access"]
    assert me(access).status_code == 200


def test_refresh_with_an_access_token_is_401(user):
    access = str(RefreshToken.for_user(user).access_token)
    response = APIClient().post("/api/token/refresh", {"refresh": access}, format="json")
    assert_error(response, 401, "token_not_valid")


@pytest.mark.django_db
def test_refresh_with_garbage_is_401():
    response = APIClient().post("/api/token/refresh", {"refresh": "garbage"}, format="json")
    assert_error(response, 401, "token_not_valid")


@pytest.mark.django_db
def test_refresh_without_a_token_is_400():
    response = APIClient().post("/api/token/refresh", {}, format="json")
    assert_error(response, 400, "validation_error", fields=("refresh",))


@pytest.mark.parametrize(
    ("deactivate", "code"),
    [
        ("save", "token_not_valid"),  # the deactivation blacklisted the user's refresh tokens
        ("update", "authentication_failed"),  # no signal: refused for the inactive user
    ],
)
def test_refresh_for_a_deactivated_user_is_401(user, deactivate, code):
    refresh = str(RefreshToken.for_user(user))
    if deactivate == "save":
        user.is_active = False
        user.save(update_fields=["is_active"])
    else:
        User.objects.filter(pk=user.pk).update(is_active=False)
    response = APIClient().post("/api/token/refresh", {"refresh": refresh}, format="json")
    assert_error(response, 401, code)


def test_refresh_for_a_deleted_user_is_401_not_500(user):
    """Regression: simplejwt looked the user up with .get() and let DoesNotExist through."""
    refresh = str(RefreshToken.for_user(user))
    user.delete()
    response = APIClient().post("/api/token/refresh", {"refresh": refresh}, format="json")
    assert_error(response, 401, "authentication_failed")


# --- Who am I, and the Authorization header --------------------------------------------------


def test_me_with_a_bearer_token(user):
    response = me(str(RefreshToken.for_user(user).access_token))
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "id": user.id,
        "email": "alice@example.com",
        "is_staff": False,
        "date_joined": body["date_joined"],
    }


def test_me_with_the_bare_token_of_seed_002s_readme(user):
    response = me(str(RefreshToken.for_user(user).access_token), bearer=False)
    assert response.status_code == 200
    assert response.json()["email"] == "alice@example.com"


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_case_insensitive(user, scheme):
    """Regression: RFC 7235 schemes are case-insensitive; `bearer <token>` was a 401."""
    token = str(RefreshToken.for_user(user).access_token)
    response = APIClient().get("/api/me", HTTP_AUTHORIZATION=f"{scheme} {token}")
    assert response.status_code == 200, response.content


def test_basic_credentials_are_not_a_login(user):
    response = APIClient().get("/api/me", HTTP_AUTHORIZATION="Basic YWxpY2U6cHc=")
    assert_error(response, 401, "not_authenticated")


@pytest.mark.django_db
def test_me_without_credentials_is_401():
    response = APIClient().get("/api/me")
    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer a b", "Bearer not.a.jwt", "garbage", "Bearer ÿþ", "Bearer e30.e30.e30"],
)
def test_a_malformed_token_is_401(user, header):
    response = APIClient().get("/api/me", HTTP_AUTHORIZATION=header)
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in {"token_not_valid", "bad_authorization_header"}


def test_an_unknown_scheme_is_401_not_authenticated(user):
    response = APIClient().get("/api/me", HTTP_AUTHORIZATION="Token abc")
    assert_error(response, 401, "not_authenticated")


def test_an_expired_token_is_401(user):
    past = timezone.now() - timedelta(hours=1)
    token = signed(claims(user, exp=int(past.timestamp()), iat=int(past.timestamp()) - 60))
    assert_error(me(token), 401, "token_not_valid")
    assert_error(me(token, bearer=False), 401, "token_not_valid")


def test_a_token_with_the_wrong_signature_is_401(user):
    token = signed(claims(user), key="someone-elses-key-that-is-long-enough-for-hs256")
    assert_error(me(token), 401, "token_not_valid")


def test_a_tampered_token_is_401(user):
    header, _, signature = str(RefreshToken.for_user(user).access_token).split(".")
    other = User.objects.create_user(email="mallory@example.com", password=PASSWORD)
    tampered = f"{header}.{b64(claims(other))}.{signature}"
    assert_error(me(tampered), 401, "token_not_valid")


def test_an_alg_none_token_is_401(user):
    token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims(user))}."
    assert_error(me(token), 401, "token_not_valid")
    assert_error(me(token, bearer=False), 401, "token_not_valid")


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_a_token_with_another_hmac_algorithm_is_401(user):
    token = signed(claims(user), algorithm="HS512")
    assert_error(me(token), 401, "token_not_valid")


def test_a_refresh_token_used_as_access_is_401(user):
    assert_error(me(str(RefreshToken.for_user(user))), 401, "token_not_valid")


@pytest.mark.parametrize("missing", ["exp", "jti", "token_type"])
def test_a_token_missing_a_claim_is_401(user, missing):
    payload = claims(user)
    del payload[missing]
    assert_error(me(signed(payload)), 401, "token_not_valid")


def test_a_token_without_a_user_is_401(user):
    payload = claims(user)
    del payload["user_id"]
    assert_error(me(signed(payload)), 401, "token_not_valid")


@pytest.mark.parametrize("user_id", ["abc", "", "1.5", ["1"], {"id": 1}, 2**70])
def test_a_token_with_a_nonsense_user_id_is_401_not_500(user, user_id):
    """Regression: a user_id the id column cannot hold raised ValueError (a 500)."""
    response = me(signed(claims(user, user_id=user_id)))
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] in {"user_not_found", "token_not_valid"}


def test_a_token_of_a_deleted_user_is_401(user):
    token = str(RefreshToken.for_user(user).access_token)
    user.delete()
    assert_error(me(token), 401, "user_not_found")


def test_a_token_of_a_deactivated_user_is_401(user):
    token = str(RefreshToken.for_user(user).access_token)
    assert me(token).status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert_error(me(token), 401, "user_inactive")
    assert_error(me(token, bearer=False), 401, "user_inactive")
