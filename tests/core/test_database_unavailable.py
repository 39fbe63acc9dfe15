"""A request whose database connection was cut answers 503 in the error shape, never a 500.

gunicorn's threads keep their connection between requests (CONN_MAX_AGE) and do not ping it first
(CONN_HEALTH_CHECKS off): a connection that PostgreSQL closed meanwhile (a restart, a failover,
an idle timeout) fails the first query of the next request on it. That request is a 503 with
Retry-After; Django then closes the broken connection, and the next request opens a new one.
"""

from typing import Any

import psycopg
import pytest
from django.db import connection

from tests.support.processes import database_url

pytestmark = [pytest.mark.django_db(transaction=True)]


def cut_this_threads_connection() -> None:
    connection.ensure_connection()
    pid = connection.connection.info.backend_pid
    with psycopg.connect(database_url(), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


def test_a_cut_connection_is_a_503_then_the_next_request_reconnects(api: Any, monkeypatch: Any):
    monkeypatch.setitem(connection.settings_dict, "CONN_HEALTH_CHECKS", False)
    assert api.get("/api/tasks").status_code == 200
    cut_this_threads_connection()

    response = api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json")
    assert response.status_code == 503, response.content
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response["Retry-After"] == "1"

    # What request_finished does in gunicorn (the test client leaves it out): drop a broken
    # connection.
    connection.close_if_unusable_or_obsolete()
    assert api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json").status_code == 201
