"""Redis is for cache, throttling and locks: with it down, tasks are still created and run."""

from typing import Any

import pytest
from django.core.cache import caches
from rest_framework.test import APIClient

from apps.tasks.execution import handle_delivery
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus

CLOSED_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture
def redis_down(settings: Any) -> Any:
    settings.REDIS_URL = CLOSED_REDIS
    # Django's setting_changed handler drops the cache connections made with the old settings.
    settings.CACHES = {
        "default": {**settings.CACHES["default"], "LOCATION": CLOSED_REDIS},
    }
    assert caches["default"].get("anything", "fallback") == "fallback"  # fails open, no error


def test_tasks_are_created_and_run_without_redis(user, broker, redis_down):
    api = APIClient()
    api.force_authenticate(user)
    response = api.post("/api/tasks", {"type": "echo", "payload": {"a": 1}}, format="json")
    assert response.status_code == 201, response.content
    task = Task.objects.get(id=response.json()["id"])
    outcome = handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    assert outcome.status == TaskStatus.SUCCEEDED
    assert api.get(f"/api/tasks/{task.id}/result").json()["result"] == {"a": 1}


def test_ready_names_redis_when_it_is_down(db, redis_down):
    response = APIClient().get("/ready")
    assert response.status_code == 503
    body = response.json()
    assert body["down"] == ["redis"]
    assert body["checks"]["database"] == "ok"
