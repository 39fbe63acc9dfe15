"""PostgreSQL connections cut under gunicorn: each thread's next request is a 503 in the error
shape (never a 500), and the one after it works.

gunicorn's threads keep their database connection between requests (CONN_MAX_AGE) and do not
ping it first (CONN_HEALTH_CHECKS off by default): after a cut, the first query of a thread's next
request fails, that request answers 503 `database_unavailable` with Retry-After, and Django closes
the broken connection when the request ends, so the thread's following request opens a new one.
"""

import httpx
import pytest
from django.db import connection
from rest_framework_simplejwt.tokens import AccessToken

from tests.support import processes
from tests.support.tcpproxy import TcpProxy

pytestmark = [pytest.mark.django_db(transaction=True)]
# One thread, so that which request meets the cut connection is known: the first after the cut.
THREADS = 1


def test_a_cut_costs_a_gunicorn_thread_one_503_then_it_reconnects(user):
    db = connection.settings_dict
    host, port = db["HOST"] or "127.0.0.1", int(db["PORT"] or 5432)
    web_port = processes.free_port()
    with TcpProxy(host, port) as proxy:
        env = processes.test_environment(
            PORT=str(web_port),
            HOST="127.0.0.1",
            WEB_CONCURRENCY="1",
            WEB_THREADS=str(THREADS),
            CONN_MAX_AGE="600",  # kept between requests, as in production
            CONN_HEALTH_CHECKS="false",
        )
        env["DATABASE_URL"] = proxy.url_for(env["DATABASE_URL"])
        web = processes.start("web", env=env)
        headers = {"Authorization": f"Bearer {AccessToken.for_user(user)}"}
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{web_port}", headers=headers) as http:

                def create() -> httpx.Response:
                    return http.post("/api/tasks", json={"type": "echo", "payload": {}}, timeout=30)

                assert {create().status_code for _ in range(5)} == {201}
                assert proxy.open_connections >= 1

                proxy.cut()  # every connection dropped ...
                proxy.restore()  # ... and PostgreSQL reachable again at once

                statuses = [create() for _ in range(5)]
        finally:
            web.stop()
    codes = [r.status_code for r in statuses]
    assert codes == [503, 201, 201, 201, 201], codes
    assert statuses[0].json()["error"]["code"] == "database_unavailable"
    assert statuses[0].headers["Retry-After"] == "1"
