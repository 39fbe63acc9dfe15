"""Liveness and readiness probes, against the real PostgreSQL, RabbitMQ and Redis.

"Down" is a dependency pointed at a closed port for the length of one test.
"""

import time
from typing import Any

import pytest
from rest_framework.test import APIClient

from taskflow.celery import app as celery_app

CLOSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"
CLOSED_REDIS = "redis://127.0.0.1:1/0"


def ready() -> Any:
    return APIClient().get("/ready")


@pytest.mark.parametrize("path", ["/health", "/health/"])
def test_health_is_200_without_credentials(path):
    response = APIClient().get(path)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_health_ignores_a_broken_token():
    response = APIClient().get("/health", HTTP_AUTHORIZATION="Bearer expired.or.broken")
    assert response.status_code == 200


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/ready", "/ready/"])
def test_ready_checks_database_broker_and_redis(path):
    response = APIClient().get(path, HTTP_AUTHORIZATION="Bearer broken")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "redis": "ok"},
    }


@pytest.mark.django_db
def test_ready_is_503_naming_the_broker_when_rabbitmq_is_unreachable(monkeypatch, settings):
    with monkeypatch.context() as patch:
        # The Celery app reads CELERY_BROKER_URL from the environment first, then its config.
        patch.setenv("CELERY_BROKER_URL", CLOSED_BROKER)
        patch.setitem(celery_app.conf, "broker_url", CLOSED_BROKER)
        settings.CELERY_BROKER_URL = CLOSED_BROKER
        started = time.monotonic()
        response = ready()
        elapsed = time.monotonic() - started
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["down"] == ["broker"]
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"] == "ok"
    assert body["checks"]["broker"].startswith("unavailable: ")
    # Regression: a refused connection waited out kombu's 2 s retry pause before answering.
    assert elapsed < 1.5, elapsed
    # Restored: ready again.
    assert ready().status_code == 200


@pytest.mark.django_db
def test_ready_is_503_naming_redis_when_redis_is_unreachable(settings):
    settings.CACHES = {
        "default": {
            **settings.CACHES["default"],
            "LOCATION": CLOSED_REDIS,
        }
    }
    response = ready()
    assert response.status_code == 503, response.content
    body = response.json()
    assert (body["status"], body["down"]) == ("unavailable", ["redis"])
    assert body["checks"]["redis"].startswith("unavailable: ")
    assert body["checks"]["broker"] == "ok"


@pytest.mark.django_db
def test_ready_is_503_naming_both_when_broker_and_redis_are_unreachable(monkeypatch, settings):
    monkeypatch.setenv("CELERY_BROKER_URL", CLOSED_BROKER)
    monkeypatch.setitem(celery_app.conf, "broker_url", CLOSED_BROKER)
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": CLOSED_REDIS}}
    response = ready()
    assert response.status_code == 503
    assert response.json()["down"] == ["broker", "redis"]


def test_probes_answer_only_get():
    response = APIClient().post("/health", {}, format="json")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
