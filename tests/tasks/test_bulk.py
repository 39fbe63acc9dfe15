"""POST /api/tasks/bulk: all-or-nothing validation, one transaction, published after commit; its
Idempotency-Key."""

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.queues import TaskQueue
from tests.conftest import client_for
from tests.security.support import assert_error
from tests.support.concurrency import at_once
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
    created, _ = services.task_create_bulk(
        owner=user,
        items=[{"type": "echo", "payload": {}}, {"type": "echo", "payload": {}, "run_at": later}],
    )
    rows = {t.id: t for t in Task.objects.filter(owner=user)}
    assert [(rows[c.id].status, rows[c.id].run_at, rows[c.id].dispatch_id) for c in created] == [
        ("queued", None, created[0].dispatch_id),
        ("postponed", later, None),
    ]
    assert [c.status for c in created] == ["queued", "postponed"]


# --- Idempotency-Key -----------------------------------------------------------------------------

BULK = {"tasks": [{"type": "echo", "payload": {"n": n}} for n in range(5)]}


def bulk(client: Any, body: dict[str, Any] = BULK, key: str | None = "order-7") -> Any:
    """POST /api/tasks/bulk with this Idempotency-Key header (None: no header)."""
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key is not None else {}
    return client.post("/api/tasks/bulk", body, format="json", **headers)


def test_a_repeated_bulk_with_its_idempotency_key_answers_the_first_tasks(api, user):
    first = bulk(api)
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first
    again = bulk(api)
    assert again.status_code == 200, again.content  # as a single create's replay
    assert again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()  # the same ids, in the items' order
    assert Task.objects.filter(owner=user).count() == 5
    assert TaskStatusChange.objects.filter(task__owner=user).count() == 5
    # Each task is the item at its place, the first request's.
    payloads = dict(Task.objects.values_list("id", "payload"))
    assert [payloads[uuid.UUID(i)] for i in again.json()["ids"]] == [{"n": n} for n in range(5)]


def test_a_bulk_replay_is_one_query_and_answers_the_tasks_current_state(user):
    from apps.tasks import services

    items = [{"type": "echo", "payload": {"n": n}} for n in range(3)]
    first, created = services.task_create_bulk(owner=user, items=items, idempotency_key="k")
    assert created
    Task.objects.filter(id=first[1].id).update(status="cancelled", dispatch_id=None)
    with CaptureQueriesContext(connection) as captured:
        again, created = services.task_create_bulk(owner=user, items=items, idempotency_key="k")
    assert not created
    assert len(captured.captured_queries) == 1, captured.captured_queries
    assert [t.id for t in again] == [t.id for t in first]
    assert [t.status for t in again] == ["queued", "cancelled", "queued"]
    assert again[1].dispatch_id is None


@pytest.mark.parametrize(
    "tasks",
    [
        [{"type": "echo", "payload": {"n": n}} for n in (0, 1, 2, 3, 99)],
        [{"type": "echo", "payload": {"n": n}} for n in range(4)],
        [{"type": "echo", "payload": {"n": n}} for n in range(6)],
        [{"type": "echo", "payload": {"n": n}} for n in (1, 0, 2, 3, 4)],
        [{"type": "echo", "payload": {"n": n}, "max_retries": 5} for n in range(5)],
        [{"type": "echo", "payload": {"n": n}, "run_at": "2099-01-01T00:00:00Z"} for n in range(5)],
    ],
    ids=["payload", "fewer", "more", "order", "max_retries", "run_at"],
)
def test_a_bulk_idempotency_key_reused_with_another_body_is_409(api, user, tasks):
    assert bulk(api).status_code == 201
    error = assert_error(bulk(api, {"tasks": tasks}), 409, "idempotency_key_reused")
    assert error["fields"] == {"Idempotency-Key": ["Already used with a different request body."]}
    assert Task.objects.filter(owner=user).count() == 5


def test_an_explicit_default_max_retries_is_the_same_bulk_request(api, user):
    """As for a single create: an omitted max_retries and the type's default are one request."""
    first = bulk(api)
    explicit = {"tasks": [dict(item, max_retries=3) for item in BULK["tasks"]]}
    again = bulk(api, explicit)
    assert again.status_code == 200, again.content
    assert again.json() == first.json()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("same_body", [True, False], ids=["same-body", "other-body"])
def test_bulk_requests_at_once_with_one_key_create_one_set_of_tasks(user, broker, same_body):
    """Both requests look the key up and find nothing before either writes (inserts into the
    table wait on a lock the test holds until both are waiting on it): the unique key decides,
    and the loser answers the winner's tasks (or a 409 for another body), never a 500 or a second
    set."""
    bodies = [BULK, BULK if same_body else {"tasks": BULK["tasks"][:3]}]

    def post() -> Any:
        return bulk(client_for(user), bodies.pop())

    responses: list[Any] = []
    errors: list[BaseException] = []  # a 500 is an exception here (the test client raises it)

    def both() -> None:
        try:
            responses.extend(at_once(post, 2))
        except BaseException as exc:
            errors.append(exc)

    requests = threading.Thread(target=both)
    table = Task._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN SHARE MODE")  # reads go on, writes wait
        requests.start()

        def both_wait_to_write() -> bool:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE relation = %s::regclass AND NOT granted",
                [table],
            )
            return cursor.fetchone()[0] == 2

        wait_for(both_wait_to_write, what="both requests to wait to write")
    requests.join(timeout=60)
    assert not requests.is_alive()
    if errors:
        raise errors[0]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == ([200, 201] if same_body else [201, 409]), [r.content for r in responses]
    by_status = {r.status_code: r for r in responses}
    if same_body:
        assert by_status[200]["Idempotent-Replayed"] == "true"
        assert by_status[200].json() == by_status[201].json()
    else:
        assert_error(by_status[409], 409, "idempotency_key_reused", ("Idempotency-Key",))
    created = by_status[201].json()["ids"]
    assert sorted(str(i) for i in Task.objects.values_list("id", flat=True)) == sorted(created)
    assert TaskStatusChange.objects.count() == len(created)


@pytest.mark.parametrize(
    "key",
    ["k" * 193, "a\x00b", "tab\there", "new\nline"],
    ids=["too-long", "nul", "tab", "newline"],
)
def test_a_bad_bulk_idempotency_key_is_400(api, user, settings, key):
    settings.TASKFLOW = {**settings.TASKFLOW, "BULK_MAX_TASKS": 1000}
    error = assert_error(bulk(api, key=key), 400, "validation_error")
    # A bulk's key leaves room for the suffix each task's key gets: 200 - len("#bulk999").
    assert error["fields"] == {
        "Idempotency-Key": ["Must be 1 to 192 printable characters (a bulk adds #bulk<n>)."]
    }
    assert "192" in error["message"]
    assert not Task.objects.exists()


def test_the_longest_bulk_idempotency_key_fits_every_tasks_key(api, user, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "BULK_MAX_TASKS": 1000}
    body = {"tasks": [{"type": "echo"} for _ in range(1000)]}
    first = bulk(api, body, key="k" * 192)
    assert first.status_code == 201, first.content
    assert bulk(api, body, key="k" * 192).json() == first.json()
    assert Task.objects.filter(owner=user).count() == 1000


def test_an_empty_bulk_idempotency_key_is_no_key(api, user):
    """As for a single create: an empty header is no header."""
    assert bulk(api, key="").status_code == 201
    assert bulk(api, key="").status_code == 201
    assert Task.objects.filter(owner=user).count() == 10


def test_a_single_creates_key_is_not_a_bulks(api, user):
    single = api.post("/api/tasks", {"type": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY="k")
    assert single.status_code == 201
    error = assert_error(bulk(api, key="k"), 409, "idempotency_key_reused")
    assert error["fields"] == {
        "Idempotency-Key": ["Already used by a single create (POST /api/tasks)."]
    }
    assert Task.objects.filter(owner=user).count() == 1


def test_a_bulks_key_is_not_a_single_creates(api, user):
    assert bulk(api, key="k").status_code == 201
    for key in ("k", "k#bulk1"):  # the header, and the key the bulk gave its second task
        response = api.post("/api/tasks", {"type": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY=key)
        error = assert_error(response, 409, "idempotency_key_reused")
        assert error["fields"] == {
            "Idempotency-Key": ["Already used by a bulk create (POST /api/tasks/bulk)."]
        }
    assert Task.objects.filter(owner=user).count() == 5


def test_a_single_create_holding_a_bulk_tasks_key_is_a_409_not_a_replay(api, user):
    """A single create's key can be what a bulk derives for one of its tasks (k#bulk2): the
    bulk with key k cannot be written, and says so."""
    single = api.post("/api/tasks", {"type": "echo"}, format="json", HTTP_IDEMPOTENCY_KEY="k#bulk2")
    assert single.status_code == 201
    error = assert_error(bulk(api, key="k"), 409, "idempotency_key_reused")
    assert "k#bulk2" in error["message"]
    assert Task.objects.filter(owner=user).count() == 1


def test_bulk_idempotency_keys_belong_to_one_user(api, other_api, user, other_user):
    mine = bulk(api, key="shared")
    theirs = bulk(other_api, key="shared")
    assert (mine.status_code, theirs.status_code) == (201, 201)
    assert not set(mine.json()["ids"]) & set(theirs.json()["ids"])
    assert Task.objects.filter(owner=user).count() == 5
    assert Task.objects.filter(owner=other_user).count() == 5
    assert bulk(other_api, key="shared").json() == theirs.json()


def test_a_bulk_replay_is_answered_at_the_active_cap(api, user, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_ACTIVE_TASKS_PER_USER": 5}
    first = bulk(api)
    assert first.status_code == 201
    again = bulk(api)
    assert again.status_code == 200, again.content  # it creates nothing, so the cap is no bar
    assert again.json() == first.json()


def test_a_bulk_whose_tasks_were_partly_deleted_cannot_be_replayed(api, user):
    first = bulk(api).json()["ids"]
    Task.objects.filter(id=first[2]).delete()
    error = assert_error(bulk(api), 409, "idempotency_key_reused", ("Idempotency-Key",))
    assert "deleted" in error["message"]
    assert Task.objects.filter(owner=user).count() == 4


def test_a_bulk_whose_tasks_were_all_deleted_is_created_again(api, user):
    """As for a single create: the key went with its tasks."""
    first = bulk(api).json()["ids"]
    Task.objects.filter(owner=user).delete()
    again = bulk(api)
    assert again.status_code == 201, again.content
    assert not set(again.json()["ids"]) & set(first)


def test_a_bulk_item_has_no_idempotency_key_of_its_own(api, user):
    """The header is the request's key; an item's own key is an unknown field, as before."""
    body = {"tasks": [{"type": "echo", "idempotency_key": "a"}]}
    error = assert_error(bulk(api, body), 400, "validation_error")
    assert set(error["fields"]) == {"tasks[0].idempotency_key"}
    assert not Task.objects.exists()


def test_a_bulk_replay_works_after_its_run_at_has_passed(api, user):
    """As for a single create: the repeat asks for nothing new, so a past run_at is no bar."""
    run_at = timezone.now() + timedelta(seconds=3)  # see test_api's single-create version
    body = {"tasks": [{"type": "echo", "run_at": run_at.isoformat()}]}
    first = bulk(api, body)
    assert first.status_code == 201, first.content
    wait_for(lambda: timezone.now() > run_at, what="run_at to pass")
    again = bulk(api, body)
    assert again.status_code == 200, again.content
    assert again.json() == first.json()
