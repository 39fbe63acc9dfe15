"""deployments/healthcheck.py: each check says healthy only when its process does its job."""

import importlib.util
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any

import pytest
from django.utils import timezone
from kombu import Connection

from apps.tasks.queues import dead_letter_queue
from apps.tasks.schedules import ensure_release_schedule
from tests.deployments.support import DEPLOYMENTS
from tests.support.processes import free_port


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("healthcheck", DEPLOYMENTS / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


healthcheck = load_healthcheck()


@pytest.mark.parametrize(
    ("allowed", "host"),
    [
        ("taskflow.example.com,localhost", "taskflow.example.com"),
        ("*", "localhost"),
        (".example.com", "example.com"),
        ("", "localhost"),
    ],
)
def test_the_api_check_sends_a_host_that_django_accepts(monkeypatch, allowed, host):
    monkeypatch.setenv("ALLOWED_HOSTS", allowed)
    assert healthcheck.allowed_host() == host


@pytest.fixture
def fake_api(monkeypatch) -> Iterator[dict[str, Any]]:
    state: dict[str, Any] = {"status": 200, "hosts": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state["hosts"].append(self.headers["Host"])
            self.send_response(state["status"] if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PORT", str(server.server_address[1]))
    monkeypatch.setenv("ALLOWED_HOSTS", "api.example.com")
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def test_the_api_check_passes_on_200_and_fails_otherwise(fake_api, capsys):
    assert healthcheck.run(["api"]) == 0
    assert fake_api["hosts"] == ["api.example.com"]
    fake_api["status"] = 500
    assert healthcheck.run(["api"]) == 1
    assert "HTTP Error 500" in capsys.readouterr().out


def test_the_api_check_fails_when_nothing_listens(monkeypatch, capsys):
    monkeypatch.setenv("PORT", str(free_port()))
    assert healthcheck.run(["api"]) == 1
    assert "unhealthy: GET http://127.0.0.1:" in capsys.readouterr().out


def test_the_deadletters_check_wants_a_consumer_on_the_queue(broker, rabbitmq_vhost):
    with pytest.raises(healthcheck.Unhealthy, match=r"nobody consumes taskflow\.deadletter"):
        healthcheck.check_deadletters()
    with Connection(rabbitmq_vhost) as connection:
        consumer = connection.Consumer([dead_letter_queue()], callbacks=[lambda body, msg: None])
        with consumer:
            assert healthcheck.check_deadletters() == "1 consumer(s) on taskflow.deadletter"


@pytest.mark.django_db
def test_the_beat_check_wants_a_recent_release():
    with pytest.raises(healthcheck.Unhealthy, match=r"run `manage\.py setup_broker`"):
        healthcheck.check_beat()
    schedule = ensure_release_schedule(interval_ms=1000)
    with pytest.raises(healthcheck.Unhealthy, match="has not sent"):
        healthcheck.check_beat()  # never ran
    schedule.last_run_at = timezone.now() - timedelta(seconds=30)
    schedule.save(update_fields=["last_run_at"])
    assert healthcheck.check_beat().startswith("beat sent the releaser at ")
    schedule.last_run_at = timezone.now() - healthcheck.BEAT_MAX_AGE - timedelta(seconds=1)
    schedule.save(update_fields=["last_run_at"])
    with pytest.raises(healthcheck.Unhealthy, match="has not sent"):
        healthcheck.check_beat()


def test_an_unknown_check_prints_the_usage(capsys):
    assert healthcheck.run(["nonsense"]) == 2
    assert "python deployments/healthcheck.py api" in capsys.readouterr().err
