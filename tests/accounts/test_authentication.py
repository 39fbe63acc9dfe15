"""The user a JWT names comes from the cache (Redis), not a query per request; a change to the
user (deactivated, deleted, demoted) is seen on the next request all the same."""

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.accounts.models import User
from tests.conftest import client_for


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
