"""taskflow.client.Client against the running stack (tests/client/conftest.py): real HTTP to
gunicorn, real workers running the tasks."""

import hashlib
import io
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice, pairwise
from pathlib import Path

import httpx
import pytest
from rest_framework_simplejwt.tokens import AccessToken

from taskflow.client import (
    AuthenticationError,
    Client,
    Conflict,
    ConnectionFailed,
    NotFound,
    RateLimited,
    ServerError,
    TaskFlowError,
    Timeout,
    ValidationError,
    error_from_response,
)
from tests.client.conftest import CLIENT_TESTS, Account, Stack, register
from tests.support.processes import ROOT, free_port
from tests.support.wait import wait_for

pytestmark = CLIENT_TESTS


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


class CountingTransport(httpx.HTTPTransport):
    """The real transport, noting each request's URL."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[httpx.URL] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.urls.append(request.url)
        return super().handle_request(request)


def test_the_client_imports_without_django_and_the_celery_app_is_still_found(tmp_path: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    probe = (
        "import sys, taskflow.client, taskflow.cli\n"
        "heavy = {'django', 'celery', 'kombu', 'rest_framework', 'apps'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
        "import os; print(os.environ.get('DJANGO_SETTINGS_MODULE'))\n"
    )
    plain = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert plain.stdout.split("\n")[:2] == ["[]", "None"], plain.stdout + plain.stderr

    # Django loads the app as it starts (shared tasks publish through the current app), and
    # `from taskflow import celery_app` (what `celery -A taskflow` finds) is that same app.
    django = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup()\n"
            "from celery import current_app; print(current_app.main)\n"
            "from apps.tasks.tasks import execute\n"
            "from taskflow import celery_app; print(execute.app is celery_app)\n",
        ],
        cwd=ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "taskflow.settings"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert django.stdout.split() == ["taskflow", "True"], django.stdout + django.stderr


def test_submit_wait_get_result_and_delete_an_echo_task(client: Client):
    assert {"echo", "long_computation", "test_permanent"} <= {
        t["name"] for t in client.task_types()
    }

    task = client.submit("echo", {"hello": "client"})
    assert (task["type"], task["status"], task["payload"]) == (
        "echo",
        "queued",
        {"hello": "client"},
    )

    done = client.wait(task["id"], timeout=30)
    assert (done["id"], done["status"], done["result"]) == (
        task["id"],
        "succeeded",
        {"hello": "client"},
    )
    assert [a["outcome"] for a in done["attempts"]] == ["succeeded"]
    assert [h["to_status"] for h in done["history"]] == ["queued", "running", "succeeded"]
    assert client.get(task["id"]) == done

    short = client.result(task["id"])
    assert (short["task_id"], short["status"], short["result"]) == (
        task["id"],
        "succeeded",
        {"hello": "client"},
    )

    client.delete(task["id"])
    with pytest.raises(NotFound) as gone:
        client.get(task["id"])
    assert (gone.value.status, gone.value.code) == (404, "task_not_found")


def test_schedules_create_list_change_run_and_delete(client: Client):
    made = client.create_schedule(
        "nightly", "echo", {"from": "schedule"}, cron="0 3 * * *", timezone="Europe/Paris"
    )
    assert (made["cron"], made["every_seconds"], made["timezone"], made["enabled"]) == (
        "0 3 * * *",
        None,
        "Europe/Paris",
        True,
    )
    assert made["next_run_at"] is not None
    assert [s["id"] for s in client.list_schedules(page_size=1)] == [made["id"]]

    changed = client.update_schedule(made["id"], every_seconds=3600, enabled=False)
    assert (changed["cron"], changed["every_seconds"], changed["next_run_at"]) == (None, 3600, None)

    task = client.run_schedule(made["id"])
    assert (task["type"], task["payload"]) == ("echo", {"from": "schedule"})
    assert client.wait(task["id"], timeout=30)["result"] == {"from": "schedule"}
    assert client.get_schedule(made["id"])["last_task_id"] == task["id"]
    keyed = client.run_schedule(made["id"], idempotency_key="once")
    assert (
        client.run_schedule(made["id"], idempotency_key="once")["id"] == keyed["id"] != task["id"]
    )

    with pytest.raises(ValidationError) as refused:
        client.create_schedule("bad", "echo", cron="0 9 * *")
    assert (refused.value.code, list(refused.value.fields)) == ("validation_error", ["cron"])

    client.delete_schedule(made["id"])
    with pytest.raises(NotFound) as gone:
        client.get_schedule(made["id"])
    assert gone.value.code == "schedule_not_found"


def test_a_token_alone_is_enough_and_an_idempotency_key_creates_one_task(
    stack: Stack, client: Client, account: Account
):
    assert client.access_token is not None and client.refresh_token is not None
    with Client(stack.url, client.access_token) as by_token:
        assert by_token.me()["email"] == account.email
        first = by_token.submit("echo", {"n": 1}, idempotency_key="order-1")
        again = by_token.submit("echo", {"n": 1}, idempotency_key="order-1")
        assert again["id"] == first["id"]
        with pytest.raises(Conflict) as reused:
            by_token.submit("echo", {"n": 2}, idempotency_key="order-1")
    assert (reused.value.status, reused.value.code) == (409, "idempotency_key_reused")
    assert list(reused.value.fields) == ["Idempotency-Key"]


def test_wait_reports_the_progress_of_a_long_computation(client: Client):
    task = client.submit("long_computation", {"duration": 3})
    seen: list[dict] = []

    done = client.wait(task["id"], timeout=30, poll_interval=0.1, on_progress=seen.append)

    assert done["status"] == "succeeded", done
    assert done["result"] == {"message": "Long computation completed successfully", "duration": 3}
    progress = [t["progress"] for t in seen]
    assert progress == sorted(progress)
    assert any(0 < p < 100 for p in progress), progress
    assert (seen[-1]["status"], seen[-1]["progress"], seen[-1]["progress_message"]) == (
        "succeeded",
        100,
        "done",
    )
    assert any(re.fullmatch(r"\d+s of 3s", t["progress_message"]) for t in seen), seen
    # Called when something changed, not on every poll.
    states = [(t["status"], t["progress"], t["progress_message"]) for t in seen]
    assert all(a != b for a, b in pairwise(states))


def test_wait_times_out_and_cancel_stops_a_running_long_computation(client: Client):
    task = client.submit("long_computation", {"duration": 60})
    wait_for(
        lambda: client.get(task["id"])["progress_message"],
        timeout=30,
        what="the long computation to report progress",
    )

    began = time.monotonic()
    with pytest.raises(Timeout) as late:
        client.wait(task["id"], timeout=0.5)
    assert 0.5 <= time.monotonic() - began < 5
    assert isinstance(late.value, TaskFlowError)
    assert late.value.code == "wait_timeout"
    assert late.value.task["status"] == "running"

    asked = client.cancel(task["id"])
    assert (asked["status"], asked["cancel_requested"]) == ("running", True)

    done = client.wait(task["id"], timeout=30)
    assert done["status"] == "cancelled"
    assert done["error"].startswith("Cancelled after"), done["error"]
    assert done["attempts"][-1]["outcome"] == "cancelled"

    with pytest.raises(Conflict) as again:
        client.cancel(task["id"])
    assert (again.value.status, again.value.code) == (409, "task_not_cancellable")
    assert again.value.task_status == "cancelled"
    assert again.value.fields == {}


def test_retry_runs_a_failed_task_again(client: Client):
    task = client.submit("test_permanent", {"attempt": "first"}, max_retries=0)
    failed = client.wait(task["id"], timeout=30)
    assert (failed["status"], failed["error"], failed["attempt_count"]) == (
        "failed",
        "this input can never work",
        1,
    )

    retried = client.retry(task["id"])
    assert (retried["status"], retried["retries"]) == ("queued", 0)

    again = client.wait(task["id"], timeout=30)
    assert (again["status"], again["attempt_count"]) == ("failed", 2)
    assert [a["outcome"] for a in again["attempts"]] == ["failed", "failed"]
    assert [h["to_status"] for h in again["history"]].count("queued") == 2


def test_a_postponed_task_takes_a_datetime_and_cancels_at_once(client: Client):
    when = datetime.now(tz=UTC) + timedelta(hours=1)
    task = client.submit("echo", {"later": True}, run_at=when)
    assert task["status"] == "postponed"
    assert abs(parse_time(task["run_at"]) - when) < timedelta(seconds=1)
    assert client.cancel(task["id"])["status"] == "cancelled"


def test_list_follows_the_cursor_pages_and_filters(stack: Stack, client: Client):
    echoes = [client.submit("echo", {"i": i}) for i in range(5)]
    failing = [client.submit("test_permanent", {}, max_retries=0) for _ in range(2)]
    for task in echoes + failing:
        client.wait(task["id"], timeout=30)
    newest_first = [t["id"] for t in reversed(echoes + failing)]

    transport = CountingTransport()
    assert client.access_token is not None
    with Client(stack.url, client.access_token, transport=transport) as counted:
        listed = counted.list(page_size=2)
        assert isinstance(listed, Iterator)
        items = list(listed)
    assert [t["id"] for t in items] == newest_first
    assert "payload" not in items[0] and "result" not in items[0]
    # Seven tasks, two a page: four requests, each after the first with the cursor it was given.
    assert [u.path for u in transport.urls] == ["/api/tasks"] * 4
    assert ["cursor" in u.params for u in transport.urls] == [False, True, True, True]
    assert all(u.params["page_size"] == "2" for u in transport.urls)

    assert [t["id"] for t in islice(client.list(page_size=2), 3)] == newest_first[:3]
    echo_ids = [t["id"] for t in reversed(echoes)]
    assert [t["id"] for t in client.list(type="echo", page_size=2)] == echo_ids
    assert [t["id"] for t in client.list(status="failed")] == [t["id"] for t in reversed(failing)]
    assert len(list(client.list(status=["failed", "succeeded"], page_size=3))) == 7
    assert list(client.list(status="running")) == []

    third = echoes[2]["created_at"]
    assert [t["id"] for t in client.list(type="echo", created_after=third)] == echo_ids[:3]
    assert [
        t["id"] for t in client.list(type="echo", created_before=parse_time(third))
    ] == echo_ids[3:]

    with pytest.raises(ValidationError) as bad:
        client.list(status="finished")  # raised at the call, not in the iteration
    assert (bad.value.status, bad.value.code) == (400, "validation_error")
    assert list(bad.value.fields) == ["status"]


def test_files_upload_and_download_round_trip(client: Client, workdir: Path):
    content = os.urandom(300_000) + bytes(range(256))
    source = workdir / "data.bin"
    source.write_bytes(content)

    from_path = client.upload(source)
    assert (from_path["name"], from_path["size"]) == ("data.bin", len(content))
    assert from_path["sha256"] == hashlib.sha256(content).hexdigest()
    from_bytes = client.upload(b"hello bytes\n", "greeting.txt")
    assert (from_bytes["name"], from_bytes["size"]) == ("greeting.txt", 12)
    assert from_bytes["content_type"].startswith("text/plain")
    with source.open("rb") as handle:
        from_handle = client.upload(handle, "handle.bin")
    assert from_handle["size"] == len(content)

    assert client.get_file(from_path["id"]) == from_path
    newest_first = [from_handle["id"], from_bytes["id"], from_path["id"]]
    assert [f["id"] for f in client.list_files(page_size=1)] == newest_first
    assert [f["id"] for f in client.list_files(name="greeting.txt")] == [from_bytes["id"]]

    copy = client.download(from_path["id"], workdir / "copy.bin")
    assert copy == workdir / "copy.bin"
    assert copy.read_bytes() == content
    into_directory = client.download(from_bytes["id"], workdir)
    assert into_directory == workdir / "greeting.txt"
    assert into_directory.read_bytes() == b"hello bytes\n"
    buffer = io.BytesIO()
    assert client.download_to(from_handle["id"], buffer) == (len(content), "handle.bin")
    assert buffer.getvalue() == content

    client.delete_file(from_bytes["id"])
    with pytest.raises(NotFound) as gone:
        client.download(from_bytes["id"], workdir / "deleted.txt")
    assert (gone.value.status, gone.value.code) == (404, "file_not_found")
    # Nothing half-written is left behind.
    assert sorted(p.name for p in workdir.iterdir()) == ["copy.bin", "data.bin", "greeting.txt"]


def test_errors_are_typed_and_carry_the_api_codes_and_fields(stack: Stack, client: Client):
    with pytest.raises(NotFound) as missing:
        client.get(str(uuid.uuid4()))
    assert (missing.value.status, missing.value.code, missing.value.fields) == (
        404,
        "task_not_found",
        {},
    )
    assert missing.value.message == "No such task."
    with pytest.raises(NotFound) as not_an_id:
        client.get("../../me")  # one path segment: it cannot reach another endpoint
    assert not_an_id.value.code == "not_found"

    with pytest.raises(ValidationError) as unknown:
        client.submit("no_such_type", {})
    assert (unknown.value.status, unknown.value.code) == (400, "unknown_task_type")
    assert list(unknown.value.fields) == ["type"]
    assert "echo" in unknown.value.body["valid_types"]

    with pytest.raises(ValidationError) as too_long:
        client.submit("long_computation", {"duration": 601})
    assert too_long.value.code == "validation_error"
    assert too_long.value.fields == {
        "payload.duration": ["Ensure this value is less than or equal to 600."]
    }
    with pytest.raises(ValidationError) as past:
        client.submit("echo", {}, run_at=datetime.now(tz=UTC) - timedelta(minutes=1))
    assert list(past.value.fields) == ["run_at"]
    with pytest.raises(ValidationError) as retries:
        client.submit("echo", {}, max_retries=11)
    assert list(retries.value.fields) == ["max_retries"]

    done = client.wait(client.submit("echo", {})["id"], timeout=30)
    with pytest.raises(Conflict) as not_retryable:
        client.retry(done["id"])
    assert (not_retryable.value.code, not_retryable.value.task_status) == (
        "task_not_retryable",
        "succeeded",
    )

    other = register(stack.url)
    with Client(stack.url, email=other.email, password=other.password) as someone_else:
        with pytest.raises(NotFound) as hidden:
            someone_else.get(done["id"])
        assert hidden.value.code == "task_not_found"

    with Client(stack.url) as anonymous, pytest.raises(AuthenticationError) as anonymous_error:
        anonymous.me()
    assert (anonymous_error.value.status, anonymous_error.value.code) == (401, "not_authenticated")
    with Client(stack.url, "not-a-token") as forged, pytest.raises(AuthenticationError) as bad:
        forged.me()
    assert bad.value.code == "token_not_valid"
    with Client(stack.url) as guesser, pytest.raises(AuthenticationError) as wrong:
        guesser.login(other.email, "not-the-password")
    assert (wrong.value.status, wrong.value.code) == (401, "authentication_failed")

    with Client(f"http://127.0.0.1:{free_port()}") as nowhere:
        with pytest.raises(ConnectionFailed) as down:
            nowhere.me()
        assert (down.value.status, down.value.code) == (None, "connection_failed")
        assert isinstance(down.value, TaskFlowError)


def test_too_many_logins_are_rate_limited_with_retry_after(stack: Stack):
    account = register(stack.url)
    allowed = 0

    def log_in_11_times() -> None:
        # 5 a minute per account (a sliding window): 11 attempts in well under a minute cannot
        # all pass, whichever window boundary falls among them.
        nonlocal allowed
        with Client(stack.url) as client:
            for _ in range(11):
                client.login(account.email, account.password)
                allowed += 1

    with pytest.raises(RateLimited) as limited:
        log_in_11_times()
    error = limited.value
    assert allowed >= 5, allowed
    assert (error.status, error.code) == (429, "throttled"), error.body
    # Up to two periods: early in a window, the five counted in it still weigh too much for a
    # sixth until a fifth of the next window has passed (60 - 5 + 12 = 67 s at second 5).
    assert error.retry_after is not None and 0 < error.retry_after <= 2 * 60, error.body


def test_an_expired_access_token_is_refreshed_once_and_the_new_tokens_handed_over(
    stack: Stack, account: Account
):
    with Client(stack.url, email=account.email, password=account.password) as first:
        user_id = first.me()["id"]
        refresh = first.refresh_token
    assert refresh is not None
    expired = AccessToken()
    expired["user_id"] = user_id
    expired.set_exp(from_time=datetime.now(tz=UTC) - timedelta(hours=1))
    handed: list[tuple[str, str | None]] = []

    with Client(
        stack.url,
        str(expired),
        refresh_token=refresh,
        on_tokens=lambda access, new_refresh: handed.append((access, new_refresh)),
    ) as client:
        assert client.me()["id"] == user_id
        assert client.submit("echo", {"after": "refresh"})["status"] == "queued"
        assert len(handed) == 1  # one refresh, then the new token serves both calls
        new_access, new_refresh = handed[0]
        assert (client.access_token, client.refresh_token) == (new_access, new_refresh)
        assert new_access != str(expired)
        assert new_refresh not in (None, refresh)  # refresh tokens rotate

    # The rotated-away refresh token no longer works: one refused refresh, and the error.
    with Client(stack.url, "not-a-token", refresh_token=refresh) as stale:
        with pytest.raises(AuthenticationError) as refused:
            stale.me()
        assert refused.value.code == "token_not_valid"


def test_logout_revokes_the_refresh_token(stack: Stack, account: Account):
    with Client(stack.url, email=account.email, password=account.password) as client:
        refresh = client.refresh_token
        client.logout()
        assert (client.access_token, client.refresh_token) == (None, None)
    with Client(stack.url, refresh_token=refresh) as again, pytest.raises(AuthenticationError):
        again.me()


def test_change_password_keeps_this_client_logged_in_and_ends_every_other_session(
    stack: Stack, account: Account
):
    new_password = "client-new-horse-4711"
    handed: list[tuple[str, str | None]] = []
    with (
        Client(
            stack.url,
            email=account.email,
            password=account.password,
            on_tokens=lambda access, refresh: handed.append((access, refresh)),
        ) as client,
        Client(stack.url, email=account.email, password=account.password) as other_device,
    ):
        old_access, old_refresh = client.access_token, client.refresh_token
        assert other_device.me()["email"] == account.email

        with pytest.raises(ValidationError) as wrong:
            client.change_password("not-the-password", new_password)
        assert (wrong.value.status, wrong.value.code) == (400, "wrong_password")
        assert list(wrong.value.fields) == ["current_password"]
        with pytest.raises(ValidationError) as weak:
            client.change_password(account.password, "short")
        assert (weak.value.code, list(weak.value.fields)) == ("weak_password", ["new_password"])
        assert (client.access_token, client.refresh_token) == (old_access, old_refresh)
        assert other_device.me()["email"] == account.email  # nothing ended yet

        tokens = client.change_password(account.password, new_password)

        assert set(tokens) == {"access", "refresh"}
        assert (client.access_token, client.refresh_token) == (tokens["access"], tokens["refresh"])
        assert handed[-1] == (tokens["access"], tokens["refresh"])
        assert client.me()["email"] == account.email
        assert client.refresh() != tokens["access"]  # the new refresh token works too
        # The other device's access token is refused, and so is its refresh token.
        with pytest.raises(AuthenticationError) as ended:
            other_device.me()
        assert ended.value.code == "token_not_valid"
        for stale in (Client(stack.url, old_access), Client(stack.url, refresh_token=old_refresh)):
            with stale, pytest.raises(AuthenticationError):
                stale.me()

    with Client(stack.url) as anyone:
        with pytest.raises(AuthenticationError):
            anyone.login(account.email, account.password)
        assert anyone.login(account.email, new_password)["access"]


def test_logout_all_ends_every_session_this_one_included(stack: Stack, account: Account):
    with (
        Client(stack.url, email=account.email, password=account.password) as client,
        Client(stack.url, email=account.email, password=account.password) as other_device,
    ):
        access, refresh = client.access_token, client.refresh_token
        client.logout_all()
        assert (client.access_token, client.refresh_token) == (None, None)
        with pytest.raises(AuthenticationError) as ended:
            other_device.me()
        assert ended.value.code == "token_not_valid"
        for stale in (Client(stack.url, access), Client(stack.url, refresh_token=refresh)):
            with stale, pytest.raises(AuthenticationError):
                stale.me()
        assert client.login(account.email, account.password)["access"]  # the password stays
        assert client.me()["email"] == account.email


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (400, "validation_error", ValidationError),
        (413, "payload_too_large", ValidationError),
        (401, "token_not_valid", AuthenticationError),
        (403, "permission_denied", AuthenticationError),
        (404, "task_not_found", NotFound),
        (405, "method_not_allowed", TaskFlowError),
        (409, "task_not_retryable", Conflict),
        (429, "too_many_active_tasks", RateLimited),
        (500, "server_error", ServerError),
    ],
)
def test_error_classes_follow_the_http_status(status: int, code: str, kind: type):
    """The mapping alone, for the statuses no test can make the server answer on demand."""
    body = {"error": {"code": code, "message": "Went wrong.", "fields": {"f": ["bad"]}}}
    error = error_from_response(httpx.Response(status, json=body, headers={"Retry-After": "7"}))
    assert type(error) is kind
    assert (error.status, error.code, error.message, error.fields) == (
        status,
        code,
        "Went wrong.",
        {"f": ["bad"]},
    )
    if isinstance(error, RateLimited):
        assert error.retry_after == 7


def test_an_answer_outside_the_error_shape_still_makes_a_typed_error():
    """A proxy's page in front of the API (a 502 with HTML)."""
    error = error_from_response(httpx.Response(502, text="<html>\n Bad Gateway </html>"))
    assert type(error) is ServerError
    assert (error.status, error.code, error.fields) == (502, "http_502", {})
    assert error.message == "Bad Gateway: <html> Bad Gateway </html>"
