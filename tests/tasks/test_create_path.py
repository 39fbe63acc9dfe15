"""A single create writes the task and its `created` history row in one INSERT statement: one
round trip, atomic by itself (no BEGIN and COMMIT of its own), that checks the owner's active-task
cap too (no SELECT of its own)."""

import uuid
from contextlib import nullcontext
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.core.exceptions import ApplicationError
from apps.tasks import services
from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TaskStatus


@pytest.fixture
def logged_sql(monkeypatch: Any) -> None:
    """The create's statement on a plain cursor: a prepared statement's text is not in Django's
    captured queries (psycopg keeps no query text for it), and this test reads the text."""
    monkeypatch.setattr(services, "prepared_cursor", connection.cursor)


@pytest.mark.django_db(transaction=True)  # autocommit, as in gunicorn
def test_a_create_is_one_statement_that_writes_the_task_and_its_history(
    user: Any, broker: Any, logged_sql: None
):
    with CaptureQueriesContext(connection) as captured:
        task, created = services.task_create(owner=user, type="echo", payload={"n": 1})
    assert created
    writes = [q["sql"] for q in captured.captured_queries if "INSERT" in q["sql"].upper()]
    assert len(writes) == 1, writes
    assert "tasks_task" in writes[0] and "tasks_taskstatuschange" in writes[0]
    assert "monitoring_taskcount" in writes[0]  # the cap, checked by the same statement
    # Nothing else reads the database before the write (the task types are cached).
    assert [q["sql"] for q in captured.captured_queries if "monitoring_taskcount" in q["sql"]] == [
        writes[0]
    ]
    stored = Task.objects.get(id=task.id)
    assert stored.status == TaskStatus.QUEUED and stored.created_at == task.created_at
    [record] = TaskStatusChange.objects.filter(task_id=task.id)
    assert (record.from_status, record.to_status, record.note) == ("", "queued", "created")
    assert record.at == task.created_at and record.actor_id == user.id


@pytest.mark.django_db(transaction=True)
def test_the_prepared_create_writes_what_the_orm_would(user: Any, broker: Any):
    """The statement is prepared on the connection and run again with other values: each
    create's row is the ORM's (a postponed task too: other parameter types, NULLs elsewhere)."""
    later = timezone.now() + timedelta(hours=1)
    made = [
        services.task_create(owner=user, type="echo", payload={"n": n}, max_retries=n)[0]
        for n in range(3)
    ] + [services.task_create(owner=user, type="echo", payload={}, run_at=later)[0]]
    written = [f.attname for f in Task._meta.concrete_fields if f.name != "published_at"]
    for task in made:  # (published_at is marked after the publish, not by the INSERT)
        stored = Task.objects.get(id=task.id)
        assert {name: getattr(stored, name) for name in written} == {
            name: getattr(task, name) for name in written
        }
    assert Task.objects.get(id=made[-1].id).status == TaskStatus.POSTPONED
    assert TaskStatusChange.objects.filter(task__owner=user, note="created").count() == 4


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("in_transaction", [False, True])
def test_a_create_at_the_cap_writes_nothing_in_its_one_statement(
    user: Any, broker: Any, settings: Any, logged_sql: None, in_transaction: bool
):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_ACTIVE_TASKS_PER_USER": 2}
    for n in range(2):
        services.task_create(owner=user, type="echo", payload={"n": n})
    with transaction.atomic() if in_transaction else nullcontext():
        with (
            CaptureQueriesContext(connection) as captured,
            pytest.raises(ApplicationError) as refused,
        ):
            services.task_create(owner=user, type="echo", payload={"n": 2})
        assert Task.objects.filter(owner=user).count() == 2  # a caller's transaction goes on
    assert (refused.value.code, refused.value.status_code) == ("too_many_active_tasks", 429)
    assert refused.value.extra == {"limit": 2}
    statements = [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]
    assert len(statements) == 1, statements
    assert Task.objects.filter(owner=user).count() == 2
    assert TaskStatusChange.objects.filter(task__owner=user).count() == 2
    assert broker.depth("default") == 2  # only the two created were published


@pytest.mark.django_db(transaction=True)
def test_a_lost_idempotency_race_inside_a_callers_transaction_leaves_it_usable(
    user: Any, broker: Any, monkeypatch: Any
):
    """The concurrent request with the same key commits between our check and our INSERT: the
    INSERT fails on the unique key, and the first task is answered; the caller's transaction
    goes on (the insert ran in a savepoint)."""
    key = f"k-{uuid.uuid4()}"
    real_new_task = services._new_task

    def concurrent_request_wins(**kwargs: Any) -> Task:
        monkeypatch.setattr(services, "_new_task", real_new_task)
        services.task_create(owner=user, type="echo", payload={}, idempotency_key=key)
        return real_new_task(**kwargs)

    monkeypatch.setattr(services, "_new_task", concurrent_request_wins)
    with transaction.atomic():
        task, created = services.task_create(
            owner=user, type="echo", payload={}, idempotency_key=key
        )
        assert not created
        assert Task.objects.filter(owner=user).count() == 1  # the transaction still works
    assert Task.objects.get(owner=user).id == task.id


# --- the view's checks and answer without DRF's fields, for the usual shape ---------------------

CREATE_INPUTS_OF_THE_USUAL_SHAPE = [
    {"type": "echo"},
    {"type": "echo", "payload": {"a": [1, {"b": None}]}},
    {"type": "echo", "payload": []},  # not an object: the service refuses it, as before
    {"type": "echo", "params": {"n": 1}},  # seed 001's name for payload
    {"type": "echo", "max_retries": 2},
    {"type": "echo", "max_retries": None, "run_at": None},
    {"type": "nope", "payload": {}, "max_retries": -1},
    {"type": "x" * 100},
]


@pytest.mark.parametrize("data", CREATE_INPUTS_OF_THE_USUAL_SHAPE)
def test_a_plain_create_input_is_what_the_input_serializer_gives(data: dict[str, Any]):
    from apps.tasks.api import _CREATE_FIELDS, TaskListCreateApi, _plain_input

    serializer = TaskListCreateApi.InputSerializer(data=data)
    assert serializer.is_valid(), serializer.errors
    plain = _plain_input(data, fields=_CREATE_FIELDS, payload_default=False)
    assert plain == dict(serializer.validated_data)


@pytest.mark.parametrize(
    "data",
    [
        None,
        ["echo"],
        {"payload": {}},
        {"type": "echo", "colour": "red"},
        {"type": " echo"},
        {"type": ""},
        {"type": "x" * 101},
        {"type": 5},
        {"type": "echo", "payload": None},
        {"type": "echo", "params": None},
        {"type": "echo", "payload": {}, "params": {}},
        {"type": "echo", "max_retries": True},
        {"type": "echo", "max_retries": 2.0},
        {"type": "echo", "max_retries": "2"},
        {"type": "echo", "run_at": "2030-01-01T00:00:00Z"},
    ],
)
def test_other_create_inputs_are_left_to_the_input_serializer(data: Any):
    from apps.tasks.api import _CREATE_FIELDS, _plain_input

    assert _plain_input(data, fields=_CREATE_FIELDS, payload_default=False) is None


@pytest.mark.django_db(transaction=True)
def test_the_create_answer_is_what_drf_fields_make(api: Any, broker: Any):
    """TaskOutputSerializer writes its dict by hand in UTC: the same as DRF's fields, key for key
    and in order, for a task just created (the instance the view answers with) and read back."""
    from rest_framework import serializers

    from apps.tasks.api import TaskOutputSerializer

    response = api.post("/api/tasks", {"type": "echo", "payload": {"m": "x"}}, format="json")
    assert response.status_code == 201, response.content
    task = Task.objects.get(id=response.json()["id"])
    drf = serializers.Serializer.to_representation(TaskOutputSerializer(), task)
    assert list(TaskOutputSerializer(task).data.items()) == list(drf.items())
    assert response.json() == drf
    assert list(response.json()) == list(drf)
