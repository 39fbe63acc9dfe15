"""Rate limits (counted in the real Redis) and the cap on a user's active tasks.

Each test gets its own cache key prefix (tests/conftest.py), so counts never carry over; rates are
lowered here, per test, to numbers a test can reach.
"""

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from apps.core import throttling
from apps.tasks import services
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.conftest import client_for
from tests.security.support import PASSWORD, assert_error
from tests.support.concurrency import at_once
from tests.support.wait import wait_for
from tests.tasks.factories import create_task

S = TaskStatus


def login(email: str, password: str = PASSWORD, address: str = "10.1.1.1", **headers: Any) -> Any:
    client = APIClient(REMOTE_ADDR=address)
    return client.post(
        "/api/login", {"email": email, "password": password}, format="json", **headers
    )


def assert_throttled(response: Any) -> int:
    error = assert_error(response, 429, "throttled")
    retry_after = int(response["Retry-After"])
    assert error["retry_after"] == retry_after
    return retry_after


# --- Login ------------------------------------------------------------------------------------


def test_login_attempts_on_one_account_are_limited_right_or_wrong(user, other_user, rates):
    rates(login_account="3/min", login_address="100/min")
    for _ in range(3):
        assert_error(login("alice@example.com", "wrong-password"), 401, "authentication_failed")
    # The fourth attempt is refused before the password is looked at, even the right one.
    retry_after = assert_throttled(login("alice@example.com", PASSWORD))
    assert 1 <= retry_after <= 2 * 60
    # Another account is not locked by it.
    assert login("bob@example.com").status_code == 200


def test_the_account_limit_holds_across_addresses_and_spellings_of_the_email(user, rates):
    rates(login_account="3/min", login_address="100/min")
    spellings = ["alice@example.com", "Alice@Example.com", " ALICE@EXAMPLE.COM "]
    for number, email in enumerate(spellings):
        response = login(email, "wrong-password", address=f"10.2.0.{number + 1}")
        assert response.status_code == 401, response.content
    assert_throttled(login("alice@example.com", address="10.2.0.99"))


def test_login_attempts_from_one_address_are_limited_on_any_account(db, rates):
    rates(login_account="100/min", login_address="3/min")
    for number in range(3):
        response = login(f"user{number}@example.com", address="10.3.0.1")
        assert_error(response, 401, "authentication_failed")
    assert_throttled(login("user9@example.com", address="10.3.0.1"))
    assert login("user9@example.com", address="10.3.0.2").status_code == 401  # another address


def test_a_forged_x_forwarded_for_does_not_escape_the_address_limit(db, rates):
    """Regression: DRF trusts X-Forwarded-For unless NUM_PROXIES is set; every guess could name
    a new address. With no proxy trusted (TRUSTED_PROXY_COUNT=0), the peer address counts."""
    rates(login_account="100/min", login_address="3/min")
    for number in range(3):
        login(
            f"user{number}@example.com", address="10.4.0.1", HTTP_X_FORWARDED_FOR=f"1.2.3.{number}"
        )
    response = login("user9@example.com", address="10.4.0.1", HTTP_X_FORWARDED_FOR="9.9.9.9")
    assert_throttled(response)


def test_behind_a_trusted_proxy_the_forwarded_address_counts(db, rates, settings):
    rates(login_account="100/min", login_address="2/min")
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.5.0.1"
    for number in range(2):
        login(f"user{number}@example.com", address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.7")
    # The client the proxy names is limited (whatever it prepends itself) ...
    assert_throttled(
        login("user9@example.com", address=proxy, HTTP_X_FORWARDED_FOR="6.6.6.6, 203.0.113.7")
    )
    # ... and another client behind the same proxy is not.
    other = login("user9@example.com", address=proxy, HTTP_X_FORWARDED_FOR="203.0.113.8")
    assert other.status_code == 401


def test_an_ipv6_client_counts_as_its_slash_64(db, rates):
    rates(login_account="100/min", login_address="2/min")
    login("user1@example.com", address="2001:db8:1:2::1")
    login("user2@example.com", address="2001:db8:1:2:ffff::9")
    assert_throttled(login("user3@example.com", address="2001:db8:1:2::abcd"))
    assert login("user3@example.com", address="2001:db8:1:3::1").status_code == 401


@pytest.mark.django_db(transaction=True)
def test_concurrent_guesses_cannot_pass_the_limit_together(rates):
    """The count is one atomic INCR: 20 attempts at once let exactly the first 5 through (DRF's
    own throttle reads, then writes, and let them all pass)."""
    rates(login_account="5/min", login_address="100/min")
    attempts = 20

    def attempt() -> int:
        # No password: a 400 after the throttle, without a database look-up.
        response = APIClient(REMOTE_ADDR="10.6.0.1").post(
            "/api/login", {"email": "alice@example.com"}, format="json"
        )
        return response.status_code

    statuses = at_once(attempt, attempts)
    assert Counter(statuses) == {400: 5, 429: 15}


# --- Register and the per-user rate --------------------------------------------------------


@pytest.mark.django_db
def test_registrations_from_one_address_are_limited(rates):
    rates(register_address="2/hour")
    client = APIClient(REMOTE_ADDR="10.7.0.1")
    for number in range(2):
        response = client.post(
            "/api/register",
            {"email": f"new{number}@example.com", "password": PASSWORD},
            format="json",
        )
        assert response.status_code == 201, response.content
    retry_after = assert_throttled(
        client.post(
            "/api/register", {"email": "new9@example.com", "password": PASSWORD}, format="json"
        )
    )
    assert 1 <= retry_after <= 2 * 3600


def test_each_user_has_a_request_rate(user, other_user, rates):
    rates(user="3/min")
    api, other = client_for(user), client_for(other_user)
    for _ in range(3):
        assert api.get("/api/me").status_code == 200
    assert_throttled(api.get("/api/tasks"))
    assert other.get("/api/me").status_code == 200  # another user's count is their own
    assert APIClient().get("/health").status_code == 200  # the probes are never limited


def test_a_limit_lifts_when_its_window_ends(user, rates):
    rates(user="2/s")
    api = client_for(user)
    refused = wait_for(
        lambda: (r := api.get("/api/me")).status_code == 429 and r, timeout=5, what="a 429"
    )
    assert assert_throttled(refused) in {1, 2}
    # Asking again meanwhile (refused, uncounted) does not push the time back.
    wait_for(lambda: api.get("/api/me").status_code == 200, timeout=5, what="the next window")


def test_an_empty_rate_turns_a_limit_off(user, rates):
    rates(user="", login_account="")
    api = client_for(user)
    assert all(api.get("/api/me").status_code == 200 for _ in range(30))


# --- Redis down: the limits count in each process ------------------------------------------


@pytest.fixture
def redis_at(settings: Any) -> Any:
    def point_at(url: str) -> None:
        settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": url}}

    return point_at


def test_with_redis_down_the_api_goes_on_and_the_limits_count_in_the_process(user, rates, redis_at):
    """A login brute force does not get unlimited guesses by waiting for a Redis outage."""
    from tests.support.processes import free_port

    redis_at(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    rates(login_account="2/min", login_address="100/min", user="3/min")
    assert login("alice@example.com").status_code == 200
    assert login("alice@example.com", password="wrong").status_code == 401
    refused = login("alice@example.com")
    assert_error(refused, 429, "throttled")
    assert 1 <= int(refused["Retry-After"]) <= 120  # the sliding window: up to two periods
    assert login("bob@example.com").status_code == 401  # another account: its own count

    api = client_for(user)
    assert [api.get("/api/me").status_code for _ in range(4)] == [200, 200, 200, 429]


@pytest.fixture
def silent_redis() -> Iterator[tuple[str, list[socket.socket]]]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0", accepted
    finally:
        stop.set()
        thread.join(timeout=5)
        for conn in accepted:
            conn.close()
        server.close()


def test_a_hung_redis_costs_one_timeout_then_is_not_asked(user, redis_at, silent_redis):
    """Without the breaker every request would wait out Redis' socket timeout (1 s)."""
    url, accepted = silent_redis
    redis_at(url)
    api = client_for(user)
    assert api.get("/api/me").status_code == 200  # waited for Redis, then went on
    assert throttling.breaker.is_open()
    connected = len(accepted)
    assert connected >= 1
    started = time.monotonic()
    assert all(api.get("/api/me").status_code == 200 for _ in range(5))
    assert len(accepted) == connected, "Redis was asked again while the breaker was open"
    assert time.monotonic() - started < 5  # not five socket timeouts


# --- The cap on active tasks -------------------------------------------------------------------


@pytest.fixture
def cap(settings: Any) -> int:
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_ACTIVE_TASKS_PER_USER": 3}
    return 3


def create(api: APIClient, **headers: Any) -> Any:
    return api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json", **headers)


def assert_capped(response: Any) -> None:
    error = assert_error(response, 429, "too_many_active_tasks")
    assert error["limit"] == 3


def test_a_user_past_the_cap_gets_429_until_a_task_finishes(api, other_api, cap):
    ids = [create(api).json()["id"] for _ in range(cap)]
    assert_capped(create(api))
    assert create(other_api).status_code == 201  # the cap is per user
    assert api.post(f"/api/tasks/{ids[0]}/cancel").status_code == 200
    assert create(api).status_code == 201
    assert_capped(create(api))


def test_every_active_state_counts_and_no_final_one_does(user, api, cap):
    for status in (S.SUCCEEDED, S.FAILED, S.CANCELLED):
        task = create_task(user)
        Task.objects.filter(id=task.id).update(status=status)
    postponed = create_task(user, run_at=timezone.now() + timedelta(hours=1))
    assert postponed.status == S.POSTPONED
    running, retrying = create_task(user), create_task(user)
    Task.objects.filter(id=running.id).update(status=S.RUNNING)
    Task.objects.filter(id=retrying.id).update(status=S.RETRYING)
    assert_capped(create(api))


def test_a_bulk_create_that_would_pass_the_cap_creates_nothing(user, api, cap):
    create_task(user)
    too_many = {"tasks": [{"type": "echo"} for _ in range(cap)]}
    assert_capped(api.post("/api/tasks/bulk", too_many, format="json"))
    assert Task.objects.filter(owner=user).count() == 1
    fits = {"tasks": [{"type": "echo"} for _ in range(cap - 1)]}
    assert api.post("/api/tasks/bulk", fits, format="json").status_code == 201


def test_a_retry_counts_against_the_cap(user, api, cap):
    cancelled = create_task(user)
    services.task_cancel(task=cancelled, actor=user)
    for _ in range(cap):
        create_task(user)
    assert_capped(api.post(f"/api/tasks/{cancelled.id}/retry"))
    assert Task.objects.get(id=cancelled.id).status == S.CANCELLED


def test_an_idempotent_repeat_is_answered_at_the_cap(user, api, cap):
    first = create(api, HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == 201
    for _ in range(cap - 1):
        create_task(user)
    again = create(api, HTTP_IDEMPOTENCY_KEY="k-1")
    assert again.status_code == 200, again.content  # it creates nothing, so the cap is no bar
    assert again.json()["id"] == first.json()["id"]


def test_a_cap_of_zero_is_no_cap(user, api, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_ACTIVE_TASKS_PER_USER": 0}
    for _ in range(3):
        create_task(user)
    assert create(api).status_code == 201


def test_the_cap_check_is_one_query_on_the_rollup_whatever_the_active_count(
    user, django_assert_num_queries
):
    """Not a walk over the owner's active tasks: the per-owner counts the triggers keep."""
    with django_assert_num_queries(1) as captured:
        services._check_active_cap(user.id)
    sql = captured.captured_queries[0]["sql"]
    assert "monitoring_taskcount" in sql and "tasks_task" not in sql, sql


@pytest.mark.parametrize(
    ("limit", "elapsed", "previous", "counted"),
    [(3, 0.5, 0, 3), (3, 0.1, 3, 0), (3, 0.9, 5, 1), (1, 0.3, 0, 1), (10, 0.0, 10, 0)],
)
def test_retry_after_is_when_the_next_request_passes(limit, elapsed, previous, counted):
    """The sliding-window estimate at now + Retry-After lets one more request through, and
    a moment before it does not."""
    period = 60
    wait = throttling.retry_after(limit, period, elapsed, previous, counted)

    def passes(after: float) -> bool:
        at = elapsed + after / period
        if at < 1:
            return previous * (1 - at) + counted + 1 <= limit + 1e-9
        return counted * (1 - (at - 1)) + 1 <= limit + 1e-9

    assert passes(wait)
    assert wait == 0 or not passes(wait - 0.5)


def test_attempts_refused_for_their_address_do_not_use_up_the_account(user, rates):
    """Someone hammering Alice's account from one address is stopped there, and Alice (from
    elsewhere) still has her own attempts."""
    rates(login_account="3/min", login_address="2/min")
    for _ in range(2):
        assert login("alice@example.com", "wrong", address="10.8.0.1").status_code == 401
    for _ in range(5):
        assert_throttled(login("alice@example.com", "wrong", address="10.8.0.1"))
    assert login("alice@example.com", address="10.8.0.2").status_code == 200  # attempt 3 of 3
    assert_throttled(login("alice@example.com", address="10.8.0.3"))
