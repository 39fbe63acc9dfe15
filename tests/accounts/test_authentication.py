"""The user a JWT names comes from the cache (Redis), not a query per request; a change to the
user (deactivated, deleted, demoted) is seen on the next request all the same."""

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
import redis.connection
from django.core.cache import caches
from django.db import connection, connections, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import AccessToken
from rest_framework_simplejwt.utils import aware_utcnow, datetime_from_epoch

from apps.accounts import authentication
from apps.accounts.models import User
from tests.conftest import client_for
from tests.support.wait import wait_for


def queries_of(client: APIClient, path: str = "/api/me") -> tuple[Any, list[str]]:
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    return response, [q["sql"] for q in captured.captured_queries]


def test_a_known_users_request_reads_no_user_row(api: APIClient, user: User):
    first, _ = queries_of(api)
    assert first.status_code == 200
    second, sql = queries_of(api)
    assert second.status_code == 200
    assert second.json()["email"] == user.email
    assert not [q for q in sql if "accounts_user" in q], sql


def test_the_cached_user_is_the_whole_row_but_the_password(api: APIClient, user: User):
    queries_of(api)
    second, _ = queries_of(api)
    assert second.json() == {
        "id": user.id,
        "email": user.email,
        "is_staff": False,
        "date_joined": user.date_joined.isoformat().replace("+00:00", "Z"),
    }


@pytest.mark.parametrize("change", ["deactivate", "delete"])
def test_a_user_changed_after_the_cache_was_filled_is_refused_at_once(
    api: APIClient, user: User, change: str
):
    assert queries_of(api)[0].status_code == 200  # cached now
    if change == "deactivate":
        user.is_active = False
        user.save(update_fields=["is_active"])
        expected = "user_inactive"
    else:
        user.delete()
        expected = "user_not_found"
    response = api.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == expected


def deactivate_in_another_connection(user_id: int) -> None:
    """The admin deactivating the user: saved and committed, on a connection of its own."""

    def deactivate() -> None:
        try:
            with transaction.atomic():
                row = User.objects.get(pk=user_id)
                row.is_active = False
                row.save()
        finally:
            connections.close_all()

    thread = threading.Thread(target=deactivate)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/me", 200),  # the user's cache entry read in the throttle's pipeline (a miss)
        (f"/api/monitoring/tasks/{uuid.uuid4()}", 403),  # read on its own (staff only)
    ],
)
def test_a_deactivation_that_commits_while_a_request_reads_the_user_is_not_undone(
    path: str, status: int
):
    """Regression: request R misses the cache and reads the user (active); the deactivation
    commits, dropping the cache entry now and on commit; then R cached the row it had read. The
    deactivated user's token worked for AUTH_USER_CACHE_SECONDS more, where the next request
    must be a 401 (docs/reliability.md)."""
    user = User.objects.create_user(email="alice@example.com", password="correct-horse-battery")
    api = client_for(user)
    interleaved: list[str] = []

    def deactivate_after_the_user_is_read(execute: Any, sql: str, *args: Any) -> Any:
        result = execute(sql, *args)
        if 'FROM "accounts_user"' in sql and not interleaved:
            interleaved.append(sql)
            deactivate_in_another_connection(user.pk)  # between R's SELECT and its caching
        return result

    with connection.execute_wrapper(deactivate_after_the_user_is_read):
        assert api.get(path).status_code == status  # R: the row it read was active
    assert interleaved
    assert not User.objects.get(pk=user.pk).is_active
    response = api.get("/api/me")
    assert response.status_code == 401, response.content
    assert response.json()["error"]["code"] == "user_inactive"


def test_a_request_after_a_change_caches_the_user_again(api: APIClient, user: User):
    """The generation raised by the change is the one the next miss reads: it caches again."""
    queries_of(api)
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    assert queries_of(api)[0].json()["is_staff"] is True  # read from PostgreSQL, and cached
    second, sql = queries_of(api)
    assert second.json()["is_staff"] is True
    assert not [q for q in sql if "accounts_user" in q], sql


def test_a_demoted_staff_user_loses_staff_rights_at_once(user: User):
    user.is_staff = True
    user.save(update_fields=["is_staff"])
    client = client_for(user)
    assert client.get("/api/me").json()["is_staff"] is True
    user.is_staff = False
    user.save(update_fields=["is_staff"])
    assert client.get("/api/me").json()["is_staff"] is False


def test_with_the_cache_off_every_request_reads_the_user(api: APIClient, user: User, settings):
    settings.AUTH_USER_CACHE_SECONDS = 0
    queries_of(api)
    User.objects.filter(id=user.id).update(is_active=False)  # no signal: only the TTL would see it
    response = api.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "user_inactive"


def test_with_redis_away_the_user_is_read_from_postgresql(api: APIClient, user: User, settings):
    settings.CACHES = {
        **settings.CACHES,
        "default": {**settings.CACHES["default"], "LOCATION": "redis://127.0.0.1:1/0"},
    }
    response, sql = queries_of(api)
    assert response.status_code == 200
    assert [q for q in sql if "accounts_user" in q]
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert api.get("/api/me").status_code == 401


def test_with_another_cache_backend_the_user_is_cached_and_forgotten(user: User, settings):
    """Not django-redis (no Lua): the same generation check, through the cache API."""
    settings.CACHES = {
        **settings.CACHES,
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    api = client_for(user)
    assert queries_of(api)[0].status_code == 200
    second, sql = queries_of(api)
    assert second.status_code == 200
    assert not [q for q in sql if "accounts_user" in q], sql
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert api.get("/api/me").status_code == 401


# --- One round trip to Redis: the cached user and the user's rate count ---------------------


@pytest.fixture
def redis_gets(monkeypatch: Any) -> list[Any]:
    """The keys read with a GET of their own from the cache (not in a pipeline)."""
    client = caches["default"].client  # type: ignore[attr-defined]
    real_get = client.get
    keys: list[Any] = []

    def get(key: Any, *args: Any, **kwargs: Any) -> Any:
        keys.append(key)
        return real_get(key, *args, **kwargs)

    monkeypatch.setattr(client, "get", get)
    return keys


def user_rate(settings: Any, rate: str) -> None:
    framework = settings.REST_FRAMEWORK
    settings.REST_FRAMEWORK = {
        **framework,
        "DEFAULT_THROTTLE_RATES": {**framework["DEFAULT_THROTTLE_RATES"], "user": rate},
    }


@pytest.mark.parametrize("path", ["/api/me", "/api/tasks"])
def test_the_cached_user_is_read_with_the_rate_count(
    api: APIClient, user: User, settings: Any, redis_gets: list[Any], path: str
):
    """The user comes in the throttle's pipeline (no GET of its own), and each request is still
    counted once: the fourth of three a minute is refused."""
    user_rate(settings, "3/min")
    assert api.get(path).status_code == 200  # reads PostgreSQL and caches the user
    redis_gets.clear()
    assert [api.get(path).status_code for _ in range(3)] == [200, 200, 429]
    assert redis_gets == []


def test_a_request_of_a_cached_user_is_one_round_trip_to_redis(
    api: APIClient, user: User, monkeypatch: Any
):
    """docs/benchmarks.md A8: the cached user and the rate count, one round trip; nothing more."""
    assert api.get("/api/me").status_code == 200  # caches the user
    sent: list[Any] = []
    real_send = redis.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(command)
        return real_send(self, command, *args, **kwargs)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", send)
    assert api.get("/api/me").status_code == 200
    assert len(sent) == 1, sent


def test_a_view_for_staff_only_reads_the_user_by_itself(user: User, settings: Any):
    """Where a permission can refuse an authenticated user, the count stays with the throttle:
    a refused request (403) is not counted."""
    user_rate(settings, "2/min")
    api = client_for(user)
    staff_only = f"/api/monitoring/tasks/{uuid.uuid4()}"
    assert [api.get(staff_only).status_code for _ in range(3)] == [403, 403, 403]
    assert [api.get("/api/me").status_code for _ in range(3)] == [200, 200, 429]


def test_requests_refused_at_authentication_do_not_count(user: User, settings: Any):
    user_rate(settings, "2/min")
    api = client_for(user)
    assert api.get("/api/me").status_code == 200
    user.is_active = False
    user.save(update_fields=["is_active"])
    assert [api.get("/api/me").status_code for _ in range(3)] == [401, 401, 401]
    user.is_active = True
    user.save(update_fields=["is_active"])
    api = client_for(user)  # a new login: the deactivation ended the tokens issued before
    assert [api.get("/api/me").status_code for _ in range(2)] == [200, 429]


# --- Verified tokens are kept, until they expire -----------------------------------------------


def test_a_kept_token_is_refused_once_it_expires(user: User):
    token = AccessToken.for_user(user)
    token.set_exp(lifetime=timedelta(seconds=5))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/me").status_code == 200  # verified, and kept
    assert str(token).encode() in authentication._verified_tokens
    expires = datetime_from_epoch(token["exp"])
    wait_for(lambda: aware_utcnow() > expires, timeout=15, what="the token to expire")
    response = api.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_not_valid"


def test_only_the_exact_verified_token_is_kept(user: User):
    token = str(AccessToken.for_user(user))
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert api.get("/api/me").status_code == 200
    assert token.encode() in authentication._verified_tokens
    head, signature = token.rsplit(".", 1)
    forged = f"{head}.{signature[:5]}{'B' if signature[5] == 'A' else 'A'}{signature[6:]}"
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {forged}")
    response = other.get("/api/me")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "token_not_valid"


def test_kept_tokens_are_dropped_when_the_signing_key_changes(api: APIClient, settings: Any):
    assert api.get("/api/me").status_code == 200
    settings.SIMPLE_JWT = {**settings.SIMPLE_JWT, "SIGNING_KEY": "another-key-" + "x" * 40}
    assert authentication._verified_tokens == {}
