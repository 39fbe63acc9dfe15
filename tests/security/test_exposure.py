"""What TaskFlow shows and keeps: the admin needs staff; no answer holds a password hash or another
user's email; DEBUG is off unless asked for; secrets come only from the environment; no token,
password or Authorization value reaches a log line (ours, gunicorn's access log, the worker's)."""

import base64
import json
import logging
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.contrib import admin
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts.models import User
from apps.core.logging import JsonFormatter, redact
from apps.schedules.models import Schedule
from apps.schedules.services import schedule_create
from apps.tasks.models import Task
from tests.conftest import client_for
from tests.handlers.runner import create, deliver
from tests.security.support import PASSWORD, api_routes
from tests.support import processes
from tests.support.files import make_file
from tests.support.http import http_server
from tests.support.wait import wait_for
from tests.tasks.factories import create_task

ROOT = Path(__file__).resolve().parents[2]


# --- The admin --------------------------------------------------------------------------------


def admin_pages() -> list[str]:
    pages = ["/admin/", "/admin/dashboard/"]
    for model in admin.site._registry:
        meta = model._meta
        pages.append(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
    return pages


def test_every_admin_page_needs_staff(user):
    staff = User.objects.create_user(email="staff@example.com", password=PASSWORD, is_staff=True)
    logged_in = Client()
    logged_in.force_login(user)
    jwt_only = Client(HTTP_AUTHORIZATION=f"Bearer {RefreshToken.for_user(staff).access_token}")
    for page in admin_pages():
        for client in (Client(), logged_in, jwt_only):  # anonymous, not staff, an API token
            response = client.get(page)
            assert response.status_code == 302, (page, response.status_code)
            assert response["Location"].startswith("/admin/login/"), page
    staff_client = Client()
    staff_client.force_login(staff)
    assert staff_client.get("/admin/").status_code == 200


def test_a_user_who_is_not_staff_cannot_log_in_to_the_admin(user):
    client = Client()
    response = client.post("/admin/login/", {"username": user.email, "password": PASSWORD})
    assert response.status_code == 200  # the form again, with an error
    assert "_auth_user_id" not in client.session
    assert client.get("/admin/").status_code == 302


def test_metrics_need_the_token_or_staff(user, settings):
    settings.METRICS_TOKEN = "m" * 32
    logged_in = Client()
    logged_in.force_login(user)
    for client in (Client(), logged_in, Client(HTTP_AUTHORIZATION="Bearer wrong")):
        assert client.get("/metrics").status_code in {401, 403}
    assert Client(HTTP_AUTHORIZATION=f"Bearer {'m' * 32}").get("/metrics").status_code == 200


# --- What answers show -------------------------------------------------------------------------


def test_no_answer_holds_a_password_hash_or_another_users_email(user, other_user):
    """Alice calls every route she can (GET with her own ids, and the writes) and every answer is
    scanned for hashes and for Bob's email."""
    for owner in (user, other_user):
        create_task(owner, payload={"n": 1})
        make_file(owner, name=f"{owner.email}.txt")
        schedule_create(owner=owner, name=owner.email, type="echo", payload={}, cron="0 9 * * *")
    task = Task.objects.filter(owner=user).first()
    own_file = make_file(user, name="mine.txt")
    own_schedule = Schedule.objects.get(owner=user)
    assert task is not None
    api = client_for(user)
    ids = {
        "task_id": str(task.id),
        "file_id": str(own_file.id),
        "schedule_id": str(own_schedule.id),
    }
    answers = []
    for route in api_routes():
        if "get" in route.methods:
            answers.append(api.get(route.path(**ids)))
    answers += [
        api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json"),
        api.post("/api/tasks/bulk", {"tasks": [{"type": "echo"}]}, format="json"),
        api.get("/api/tasks?type=echo&page_size=200"),
        api.post(
            "/api/schedules", {"name": "n", "type": "echo", "every_seconds": 3600}, format="json"
        ),
        api.post(f"/api/schedules/{own_schedule.id}/run"),
        APIClient().post(
            "/api/register", {"email": other_user.email, "password": PASSWORD}, format="json"
        ),
        APIClient().post(
            "/api/login", {"email": other_user.email, "password": "wrong"}, format="json"
        ),
        APIClient().post("/api/login", {"email": user.email, "password": PASSWORD}, format="json"),
    ]
    assert {a.status_code for a in answers} <= {200, 201, 400, 401, 403}
    assert sum(a.status_code == 200 for a in answers) >= 10  # real answers, not only errors
    hashes = [u.password for u in User.objects.all()]
    for answer in answers:
        streamed = getattr(answer, "streaming_content", None)
        body = b"".join(streamed) if answer.streaming and streamed else answer.content
        text = body.decode(errors="replace")
        assert other_user.email not in text, text[:300]
        assert not any(h in text for h in hashes)
        assert "pbkdf2_" not in text and "argon2" not in text and "bcrypt" not in text


# --- Settings from an empty environment --------------------------------------------------------


def settings_with(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """taskflow.settings imported in a fresh interpreter with only `env` (and no .env file)."""
    code = (
        "import json; from taskflow import settings as s; print(json.dumps({"
        "'DEBUG': s.DEBUG, 'SECRET_KEY': s.SECRET_KEY, 'JWT': s.SIMPLE_JWT['SIGNING_KEY'], "
        "'METRICS_TOKEN': s.METRICS_TOKEN, 'MAIL_PASSWORD': s.EMAIL_HOST_PASSWORD, "
        "'DB_PASSWORD': s.DATABASES['default'].get('PASSWORD'), 'LOCAL': s.LOCAL_SECRET_KEY}))"
    )
    base = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "ENV_FILE": "/nonexistent/.env"}
    return subprocess.run(
        [sys.executable, "-c", code],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def loaded(env: dict[str, str]) -> dict[str, Any]:
    result = settings_with(env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_debug_is_off_unless_asked_for():
    assert loaded({})["DEBUG"] is False
    assert loaded({"DEBUG": "true"})["DEBUG"] is True
    assert loaded({"DEBUG": "false"})["DEBUG"] is False


def test_secrets_come_from_the_environment():
    secrets = {
        "SECRET_KEY": "k" * 50,
        "JWT_SIGNING_KEY": "j" * 50,
        "METRICS_TOKEN": "metrics-token-from-env",
        "MAIL_PASSWORD": "mail-password-from-env",
        "DATABASE_URL": "postgres://taskflow:db-password-from-env@db:5432/taskflow",
    }
    values = loaded(secrets)
    assert values["SECRET_KEY"] == secrets["SECRET_KEY"]
    assert values["JWT"] == secrets["JWT_SIGNING_KEY"]
    assert values["METRICS_TOKEN"] == secrets["METRICS_TOKEN"]
    assert values["MAIL_PASSWORD"] == secrets["MAIL_PASSWORD"]
    assert values["DB_PASSWORD"] == "db-password-from-env"
    # Without them: no secret at all, except the local key that is good for this machine only.
    empty = loaded({})
    assert (empty["METRICS_TOKEN"], empty["MAIL_PASSWORD"], empty["DB_PASSWORD"]) == ("", "", "")
    assert empty["SECRET_KEY"] == empty["JWT"] == empty["LOCAL"]


@pytest.mark.parametrize(
    "env",
    [
        {},  # the committed local key
        {"SECRET_KEY": "change-me"},  # a placeholder
        {"SECRET_KEY": "k" * 50, "JWT_SIGNING_KEY": "short"},
    ],
    ids=["local-key", "placeholder", "short-jwt-key"],
)
def test_a_deployment_beyond_this_machine_refuses_a_known_or_short_key(env):
    """Regression: deployments/.env.example's key (public, in this repository) signed JWTs in
    any deployment that copied the file: anyone could mint a token for any user."""
    result = settings_with({"ALLOWED_HOSTS": "api.example.com", **env})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "set a long random one" in result.stderr


def test_a_deployment_with_its_own_key_starts():
    values = loaded({"ALLOWED_HOSTS": "api.example.com", "SECRET_KEY": "x" * 50})
    assert values["DEBUG"] is False


def test_no_secret_default_is_committed_in_the_settings():
    """Every setting read from a variable named like a secret defaults to nothing, or to the
    local key (refused beyond this machine, above)."""
    import ast

    tree = ast.parse((ROOT / "taskflow" / "settings.py").read_text())
    secret_like = ("SECRET", "PASSWORD", "TOKEN", "SIGNING_KEY")
    checked = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and ast.unparse(node.func).startswith("env.")):
            continue
        first = node.args[0] if node.args else None
        name = str(first.value) if isinstance(first, ast.Constant) else ""
        if not any(word in str(name) for word in secret_like):
            continue
        if name.endswith("_RATE_PER_USER"):  # PASSWORD_CHANGE_RATE_PER_USER: a rate, no secret
            continue
        default = next((k.value for k in node.keywords if k.arg == "default"), None)
        checked.append(name)
        assert isinstance(default, ast.Name) or (
            isinstance(default, ast.Constant) and default.value == ""
        ), f"{name} has a default secret: {ast.unparse(default) if default else None}"
    assert {"SECRET_KEY", "JWT_SIGNING_KEY", "MAIL_PASSWORD", "METRICS_TOKEN"} <= set(checked)


def test_an_unknown_url_answers_json_not_a_debug_page():
    response = Client().get("/no/such/page")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert b"URLconf" not in response.content


# --- Logs --------------------------------------------------------------------------------------


def token_parts(*tokens: str) -> list[str]:
    """Each token, and each one's signature alone (a leaked signature is a leaked token)."""
    return [part for token in tokens for part in (token, token.rsplit(".", 1)[-1])]


def assert_not_in(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... appears in {where}"


def test_no_credential_reaches_a_log_line_in_process(caplog, user, settings):
    """Register, log in (wrongly, then rightly), refresh, call with each kind of header, run tasks
    that carry credentials (a header, a password in the URL) and log out: every record of every
    logger, at DEBUG, formatted as text and as JSON, is free of them."""
    caplog.set_level(logging.DEBUG)
    settings.SSRF_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    settings.DOWNLOAD_MAX_FILE_BYTES = 10  # so that the download fails, with the URL in the error
    anon = APIClient()
    new_password = "n3w-user-pa55phrase"
    wrong_password = "wr0ng-pa55phrase"
    anon.post(
        "/api/register", {"email": "carol@example.com", "password": new_password}, format="json"
    )
    anon.post(
        "/api/login", {"email": "carol@example.com", "password": wrong_password}, format="json"
    )
    first = anon.post(
        "/api/login", {"email": "carol@example.com", "password": new_password}, format="json"
    ).json()
    second = anon.post("/api/token/refresh", {"refresh": first["refresh"]}, format="json").json()
    basic = base64.b64encode(f"carol@example.com:{new_password}".encode()).decode()
    for header in (
        f"Bearer {second['access']}",
        second["access"],
        f"Basic {basic}",
        "Bearer x.y.z",
    ):
        anon.get("/api/me", HTTP_AUTHORIZATION=header)
    api_secret = "api-s3cret-in-a-header"
    url_secret = "url-s3cret-in-a-url"
    with http_server() as server:
        base = f"http://carol:{url_secret}@127.0.0.1:{server.port}"
        fetch = create(
            user,
            "fetch_url",
            {"url": f"{base}/echo", "headers": {"Authorization": f"Bearer {api_secret}"}},
            max_retries=0,
        )
        download = create(user, "download_files", {"urls": [f"{base}/bytes/100"]}, max_retries=0)
        deliver(fetch)
        deliver(download)
    assert fetch.status == "succeeded"
    assert download.status == "failed"
    assert url_secret in download.error  # the user's own task keeps its URL; the log does not
    anon.post("/api/logout", {"refresh": second["refresh"]}, format="json")

    secrets = [
        new_password,
        wrong_password,
        basic,
        api_secret,
        url_secret,
        *token_parts(first["access"], first["refresh"], second["access"], second["refresh"]),
    ]
    text_formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    json_formatter = JsonFormatter()
    assert len(caplog.records) > 20
    for record in caplog.records:
        # The filter the console handler runs (settings.LOGGING), then both formats.
        from apps.core.logging import RedactFilter

        RedactFilter().filter(record)
        line = text_formatter.format(record) + json_formatter.format(record)
        assert_not_in(line, secrets, f"a {record.name} record")


def test_redact_leaves_ordinary_text_alone():
    for text in (
        "GET /api/tasks?page_size=2 200 3.1ms",
        "http://example.com:8080/path@x",
        "alice@example.com logged in",
        "Task 1 failed: HTTP 500",
    ):
        assert redact(text) == text


@pytest.mark.django_db(transaction=True)
def test_no_credential_reaches_the_web_or_worker_logs(broker):
    """The real processes at DEBUG: gunicorn with its access log (whose format has no
    Authorization), and the io worker running a task with credentials."""
    port = processes.free_port()
    with (
        http_server() as target,
        processes.running(
            "web",
            "worker-io",
            PORT=str(port),
            WEB_CONCURRENCY="1",
            ACCESS_LOG="1",
            LOG_LEVEL="DEBUG",
            IO_WORKER_MIN="1",
            IO_WORKER_MAX="1",
            SSRF_ALLOWED_NETWORKS="127.0.0.1/32",
        ) as started,
    ):
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        email, password = f"dave-{uuid.uuid4().hex[:6]}@example.com", "d4ve-pa55phrase-1"
        assert (
            http.post("/api/register", json={"email": email, "password": password}).status_code
            == 201
        )
        http.post("/api/login", json={"email": email, "password": "wr0ng-pa55phrase"})
        first = http.post("/api/login", json={"email": email, "password": password}).json()
        second = http.post("/api/token/refresh", json={"refresh": first["refresh"]}).json()
        basic = base64.b64encode(f"{email}:{password}".encode()).decode()
        bearer = {"Authorization": f"Bearer {second['access']}"}
        for header in (bearer["Authorization"], second["access"], f"Basic {basic}"):
            http.get("/api/me", headers={"Authorization": header})
        api_secret, url_secret = "api-s3cret-in-a-header", "url-s3cret-in-a-url"
        url = f"http://dave:{url_secret}@127.0.0.1:{target.port}/echo"
        created = http.post(
            "/api/tasks",
            json={
                "type": "fetch_url",
                "payload": {"url": url, "headers": {"Authorization": f"Bearer {api_secret}"}},
            },
            headers=bearer,
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["id"]
        wait_for(
            lambda: (
                http.get(f"/api/tasks/{task_id}", headers=bearer).json()["status"] == "succeeded"
            ),
            timeout=60,
            what="the fetch to run",
        )
        assert http.post("/api/logout", json={"refresh": second["refresh"]}).status_code == 205
        http.close()
    web_log, worker_log = started["web"].log(), started["worker-io"].log()
    assert '"POST /api/login HTTP/1.1" 200' in web_log  # the access log is on
    assert "HTTP Request: GET" in worker_log  # httpx logged the fetch (its URL redacted)
    secrets = [
        password,
        "wr0ng-pa55phrase",
        basic,
        api_secret,
        url_secret,
        *token_parts(first["access"], first["refresh"], second["access"], second["refresh"]),
    ]
    assert_not_in(web_log, [*secrets, email], "the web process's log")  # not even the user name
    assert_not_in(worker_log, secrets, "the worker's log")
