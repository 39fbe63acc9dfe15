"""POST /api/tasks/bulk: all-or-nothing validation, one transaction, published after commit."""

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.queues import TaskQueue
from tests.support.wait import wait_for


@pytest.mark.django_db(transaction=True)
def test_bulk_create_makes_every_task_and_publishes_the_queued_ones(api, user, broker):
    later = (timezone.now() + timedelta(hours=1)).isoformat()
    items = [{"type": "echo", "payload": {"n": n}} for n in range(300)]
    items.append({"type": "echo", "payload": {}, "run_at": later})
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["created"] == 301
    assert Task.objects.filter(owner=user).count() == 301
    assert Task.objects.filter(owner=user, status="postponed").count() == 1
    assert TaskStatusChange.objects.filter(task__owner=user, note="created").count() == 301
    queued = {str(i) for i in Task.objects.filter(status="queued").values_list("id", flat=True)}
    assert Task.objects.filter(owner=user, published_at__isnull=False).count() == 300
    # echo runs in batches: its 300 tasks are in messages of up to 16, each task once.
    carried: list[str] = []

    def all_carried() -> bool:
        carried.extend(broker.task_ids(TaskQueue.DEFAULT))
        return len(carried) >= 300

    wait_for(all_carried, what="300 tasks' messages")
    assert sorted(carried) == sorted(queued)


def test_one_bad_item_creates_nothing_and_names_the_item(api, user):
    items = [{"type": "echo", "payload": {}} for _ in range(5)]
    items[2] = {"type": "long_computation", "payload": {"duration": -1}}
    items[4] = {"type": "nope", "payload": {}}
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert "tasks[2].payload.duration" in fields
    assert "tasks[4].type" in fields
    assert not Task.objects.exists()


def test_malformed_items_are_400_per_item(api, user):
    response = api.post(
        "/api/tasks/bulk",
        {"tasks": [{"type": "echo", "max_retries": "many"}, {"payload": {}}]},
        format="json",
    )
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"tasks[0].max_retries", "tasks[1].type"}


@pytest.mark.parametrize("tasks", [[], "nope", None])
def test_an_empty_or_wrong_list_is_400(api, tasks):
    response = api.post("/api/tasks/bulk", {"tasks": tasks}, format="json")
    assert response.status_code == 400
    assert "tasks" in response.json()["error"]["fields"]


def test_more_than_the_limit_is_400(api, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "BULK_MAX_TASKS": 3}
    items = [{"type": "echo"} for _ in range(4)]
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"tasks": ["Give 1 to 3 tasks."]}


@pytest.mark.django_db(transaction=True)
def test_bulk_rows_are_what_a_single_create_writes(api, user, broker):
    """The bulk writes its rows with COPY: the same columns, defaults and triggers as an INSERT."""
    from django.db.models import Sum

    from apps.monitoring.models import TaskCount

    later = (timezone.now() + timedelta(hours=1)).isoformat()
    single = api.post(
        "/api/tasks", {"type": "echo", "payload": {"a": [1, "é", None]}}, format="json"
    )
    items: list[dict[str, Any]] = [
        {"type": "echo", "payload": {"a": [1, "é", None]}} for _ in range(99)
    ]
    items.append({"type": "echo", "payload": {}, "run_at": later, "max_retries": 5})
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert response.status_code == 201, response.content
    ids = response.json()["ids"]

    def row(task_id: str) -> dict[str, Any]:
        values: dict[str, Any] = dict(Task.objects.filter(id=task_id).values().get())
        for column in ("id", "dispatch_id", "created_at", "updated_at", "published_at"):
            values.pop(column)
        return values

    assert row(ids[0]) == row(single.json()["id"])
    postponed = Task.objects.get(id=ids[-1])
    assert (postponed.status, postponed.max_retries, postponed.dispatch_id) == (
        "postponed",
        5,
        None,
    )
    first = Task.objects.get(id=ids[0])
    assert first.updated_at >= first.created_at
    change = TaskStatusChange.objects.get(task_id=ids[0])
    assert (change.from_status, change.to_status, change.note, change.actor_id) == (
        "",
        "queued",
        "created",
        user.id,
    )
    assert change.at == first.created_at
    # The rollups' trigger saw the COPY (the statistics and the active-task cap read them).
    counts = TaskCount.objects.filter(owner_id=user.id).values("status").annotate(n=Sum("n"))
    assert {c["status"]: c["n"] for c in counts} == {"queued": 100, "postponed": 1}


def test_an_item_that_is_not_an_object_is_named(api, user):
    items: list[Any] = [{"type": "echo"}, "nope", {"type": "echo", "colour": "red"}]
    response = api.post("/api/tasks/bulk", {"tasks": items}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert set(fields) == {"tasks[1].non_field_errors", "tasks[2].colour"}
    assert not Task.objects.exists()


def test_a_null_item_is_named_not_a_500(api, user):
    # Found by the schema fuzz test: {"tasks": [null]} was a 500.
    response = api.post("/api/tasks/bulk", {"tasks": [{"type": "echo"}, None]}, format="json")
    assert response.status_code == 400
    assert set(response.json()["error"]["fields"]) == {"tasks[1].non_field_errors"}
    assert not Task.objects.exists()


# --- the plain items' check, the rows without model instances, the service's own rules ----------


@pytest.mark.parametrize(
    "item",
    [
        {"type": "echo"},
        {"type": "echo", "payload": {"a": [1, {"b": None}]}},
        {"type": "echo", "payload": []},  # not an object: the service refuses it, as before
        {"type": "echo", "payload": "text"},
        {"type": "echo", "max_retries": 2},
        {"type": "echo", "max_retries": None, "run_at": None},
        {"type": "nope", "payload": {}, "max_retries": -1},
        {"type": "x" * 100},
    ],
)
def test_a_plain_item_is_what_the_item_serializer_gives(item):
    from apps.tasks.api import TaskBulkItemSerializer, _plain_item

    assert _plain_item(item) == dict(TaskBulkItemSerializer().run_validation(item))


@pytest.mark.parametrize(
    "item",
    [
        None,
        "echo",
        {"payload": {}},
        {"type": "echo", "colour": "red"},
        {"type": " echo"},
        {"type": ""},
        {"type": "x" * 101},
        {"type": 5},
        {"type": "echo", "payload": None},
        {"type": "echo", "max_retries": True},
        {"type": "echo", "max_retries": 2.0},
        {"type": "echo", "max_retries": "2"},
        {"type": "echo", "run_at": "2030-01-01T00:00:00Z"},
    ],
)
def test_other_items_are_left_to_the_item_serializer(item):
    from apps.tasks.api import _plain_item

    assert _plain_item(item) is None


@pytest.mark.django_db(transaction=True)
def test_copy_text_escapes_round_trip(api, user, broker):
    """COPY's text format: a tab, a newline, a backslash and escaped JSON arrive as sent."""
    payload = {"s": "tab\there\\back\nline\r", "q": 'quote " and \\u0041', "é": "ü"}
    response = api.post(
        "/api/tasks/bulk", {"tasks": [{"type": "echo", "payload": payload}]}, format="json"
    )
    assert response.status_code == 201, response.content
    assert Task.objects.get(id=response.json()["ids"][0]).payload == payload


def test_the_service_refuses_what_a_single_create_refuses(user):
    """task_create_bulk is also called without the API (the bench): its checks are its own."""
    from apps.core.exceptions import ApplicationError
    from apps.tasks import services

    items: list[dict[str, Any]] = [
        {"type": "echo", "payload": {"ok": 1}},
        {"type": "long_computation", "payload": {"duration": -1}},
        {"type": "echo", "payload": ["not", "an", "object"]},
        {"type": "echo", "payload": {}, "max_retries": 10_000},
        {"type": "echo", "payload": {}, "run_at": timezone.now() - timedelta(minutes=1)},
        {"type": "echo", "payload": {"n": float("nan")}},
        {"type": "nope", "payload": {}},
    ]
    with pytest.raises(ApplicationError) as caught:
        services.task_create_bulk(owner=user, items=items)
    fields = caught.value.fields
    for index in range(1, 6):  # the same errors as a single create of the item
        with pytest.raises(ApplicationError) as one:
            services.task_create(owner=user, **items[index])
        assert one.value.fields
        for field, messages in one.value.fields.items():
            assert fields[f"tasks[{index}].{field}"] == messages
    assert set(fields) == {
        "tasks[1].payload.duration",
        "tasks[2].payload",
        "tasks[3].max_retries",
        "tasks[4].run_at",
        "tasks[5].payload.n",  # where the NaN is, as for NUL (it was "payload": not JSON)
        "tasks[6].type",
    }
    assert not Task.objects.exists()


def test_the_service_answers_ids_and_states(user):
    from apps.tasks import services

    later = timezone.now() + timedelta(hours=1)
    created = services.task_create_bulk(
        owner=user,
        items=[{"type": "echo", "payload": {}}, {"type": "echo", "payload": {}, "run_at": later}],
    )
    rows = {t.id: t for t in Task.objects.filter(owner=user)}
    assert [(rows[c.id].status, rows[c.id].run_at, rows[c.id].dispatch_id) for c in created] == [
        ("queued", None, created[0].dispatch_id),
        ("postponed", later, None),
    ]
    assert [c.status for c in created] == ["queued", "postponed"]
