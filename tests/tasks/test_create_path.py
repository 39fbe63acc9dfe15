"""A single create writes the task and its `created` history row in one INSERT statement: one
round trip, atomic by itself (no BEGIN and COMMIT of its own)."""

import uuid
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from apps.tasks import services
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TaskStatus


@pytest.mark.django_db(transaction=True)  # autocommit, as in gunicorn
def test_a_create_is_one_statement_that_writes_the_task_and_its_history(user: Any, broker: Any):
    with CaptureQueriesContext(connection) as captured:
        task, created = services.task_create(owner=user, type="echo", payload={"n": 1})
    assert created
    writes = [q["sql"] for q in captured.captured_queries if "INSERT" in q["sql"].upper()]
    assert len(writes) == 1, writes
    assert "tasks_task" in writes[0] and "tasks_taskstatuschange" in writes[0]
    stored = Task.objects.get(id=task.id)
    assert stored.status == TaskStatus.QUEUED and stored.created_at == task.created_at
    [record] = TaskStatusChange.objects.filter(task_id=task.id)
    assert (record.from_status, record.to_status, record.note) == ("", "queued", "created")
    assert record.at == task.created_at and record.actor_id == user.id


@pytest.mark.django_db(transaction=True)
def test_a_lost_idempotency_race_inside_a_callers_transaction_leaves_it_usable(
    user: Any, broker: Any, monkeypatch: Any
):
    """The concurrent request with the same key commits between our check and our INSERT: the
    INSERT fails on the unique key, and the first task is answered; the caller's transaction
    goes on (the insert ran in a savepoint)."""
    key = f"k-{uuid.uuid4()}"
    real_cap_check = services._check_active_cap

    def concurrent_request_wins(owner_id: int, adding: int = 1) -> None:
        monkeypatch.setattr(services, "_check_active_cap", real_cap_check)
        services.task_create(owner=user, type="echo", payload={}, idempotency_key=key)

    monkeypatch.setattr(services, "_check_active_cap", concurrent_request_wins)
    with transaction.atomic():
        task, created = services.task_create(
            owner=user, type="echo", payload={}, idempotency_key=key
        )
        assert not created
        assert Task.objects.filter(owner=user).count() == 1  # the transaction still works
    assert Task.objects.get(owner=user).id == task.id
