"""The hot reads at scale: no read counts the whole task table, and the admin changelist counts
from PostgreSQL's estimate when it is unfiltered (docs/benchmarks.md, "Reads at 1,000,000 rows")."""

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
from django.http import QueryDict
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from rest_framework import serializers
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.tasks import admin as task_admin
from apps.tasks import selectors
from apps.tasks.api import TaskListItemSerializer
from apps.tasks.models import Task, TaskAttempt, TaskStatusChange
from apps.tasks.states import TaskStatus
from tests.tasks.factories import make_task

S = TaskStatus
CHANGELIST = reverse("admin:tasks_task_changelist")
COUNT = re.compile(r"\bCOUNT\(", re.IGNORECASE)


def whole_table_counts(queries: list[dict[str, Any]]) -> list[str]:
    """COUNT queries on the task table without a WHERE: a read of every row."""
    return [
        q["sql"]
        for q in queries
        if COUNT.search(q["sql"]) and "tasks_task" in q["sql"] and " WHERE " not in q["sql"]
    ]


def analyze_tasks() -> None:
    """What autovacuum does on a real table: gives pg_class.reltuples its value."""
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE tasks_task")


@pytest.fixture
def tasks(user: User, other_user: User) -> list[Task]:
    now = timezone.now()
    made = [make_task(user, status=S.SUCCEEDED) for _ in range(5)]
    made += [make_task(user, status=S.FAILED, type="fetch_url", finished_at=now) for _ in range(3)]
    made.append(
        make_task(
            user, status=S.FAILED, finished_at=now, dead_lettered_at=now, dead_letter_reason="x"
        )
    )
    made += [make_task(other_user, status=S.QUEUED) for _ in range(3)]
    TaskAttempt.objects.create(task=made[0], number=1, outcome="succeeded", started_at=now)
    TaskStatusChange.objects.create(task=made[0], from_status="", to_status=S.QUEUED, at=now)
    return made


def test_hot_reads_never_count_the_whole_task_table(
    api: APIClient, admin: Client, tasks, monkeypatch
):
    monkeypatch.setattr(task_admin, "EXACT_COUNT_BELOW", 0)  # the estimate, as at 1M rows
    analyze_tasks()
    first = api.get("/api/tasks?page_size=2").json()
    reads = {
        "list": (api, "/api/tasks"),
        "cursor page": (api, first["next"]),
        "status and type": (api, "/api/tasks?status=failed&type=fetch_url"),
        "dead-lettered": (api, "/api/tasks?dead_lettered=true"),
        "detail": (api, f"/api/tasks/{tasks[0].id}"),
        "stats": (api, "/api/stats"),
        "admin changelist": (admin, CHANGELIST),
    }
    for name, (client, path) in reads.items():
        with CaptureQueriesContext(connection) as captured:
            response = client.get(path)
        assert response.status_code == 200, (name, response.content[:500])
        assert whole_table_counts(captured.captured_queries) == [], name


def test_filtered_lists_read_in_index_order_without_distinct(api: APIClient, tasks):
    """django-filter's MultipleChoiceFilter adds a SELECT DISTINCT over every column by default,
    which sorted every matching row before the LIMIT."""
    with CaptureQueriesContext(connection) as captured:
        body = api.get("/api/tasks?status=failed&type=fetch_url").json()
    assert {item["id"] for item in body["results"]} == {
        str(task.id) for task in tasks if task.status == S.FAILED and task.type == "fetch_url"
    }
    listing = [q["sql"] for q in captured.captured_queries if '"tasks_task"' in q["sql"]]
    assert listing and all("DISTINCT" not in sql for sql in listing)
    two = api.get("/api/tasks?status=failed&status=queued").json()["results"]
    assert len(two) == len({item["id"] for item in two}) == 4  # the user's; no row twice


def test_task_count_estimate_is_the_planners_row_count(tasks):
    analyze_tasks()
    assert selectors.task_count_estimate() == Task.objects.count()


def test_unfiltered_changelist_counts_from_the_estimate(admin: Client, tasks, monkeypatch):
    monkeypatch.setattr(task_admin, "EXACT_COUNT_BELOW", 0)
    analyze_tasks()
    monkeypatch.setattr(selectors, "task_count_estimate", lambda: 1_234_567)
    with CaptureQueriesContext(connection) as captured:
        response = admin.get(CHANGELIST)
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1_234_567
    assert len(response.context["cl"].result_list) == len(tasks)
    assert not [q for q in captured.captured_queries if COUNT.search(q["sql"])]


def test_filtered_or_searched_changelist_counts_exactly(
    admin: Client, tasks, user: User, monkeypatch
):
    monkeypatch.setattr(task_admin, "EXACT_COUNT_BELOW", 0)
    monkeypatch.setattr(selectors, "task_count_estimate", lambda: 1_234_567)
    failed = admin.get(CHANGELIST, {"status__exact": S.FAILED})
    assert failed.context["cl"].result_count == 4
    dead = admin.get(CHANGELIST, {"dead_lettered": "yes"})
    assert dead.context["cl"].result_count == 1
    searched = admin.get(CHANGELIST, {"q": user.email})
    assert searched.context["cl"].result_count == 9


def test_small_or_never_analysed_tables_are_counted_exactly(admin: Client, tasks, monkeypatch):
    # Below EXACT_COUNT_BELOW (the test database's few rows) the count is exact and cheap.
    monkeypatch.setattr(selectors, "task_count_estimate", lambda: 3)
    assert admin.get(CHANGELIST).context["cl"].result_count == len(tasks)
    # No statistics yet (reltuples -1): the estimate is None, the count exact.
    monkeypatch.setattr(task_admin, "EXACT_COUNT_BELOW", 0)
    monkeypatch.setattr(selectors, "task_count_estimate", lambda: None)
    assert admin.get(CHANGELIST).context["cl"].result_count == len(tasks)


def test_list_items_are_what_drf_fields_make(user: User, settings):
    """TaskListItemSerializer writes its dict by hand for speed: the same as DRF's fields make,
    key for key, with every column set and with every nullable one null."""
    now = timezone.now()
    full = make_task(
        user,
        status=S.FAILED,
        run_at=now + timedelta(hours=1),
        cancel_requested_at=now,
        dead_lettered_at=now,
        dead_letter_reason="rejected",
        error="ValueError: x",
        progress=40,
        progress_message="half",
        attempts=3,
        retries=2,
        started_at=now,
        finished_at=now + timedelta(microseconds=1),
    )
    bare = make_task(user, status=S.QUEUED)
    for task in Task.objects.filter(id__in=[full.id, bare.id]).only(*selectors.LIST_FIELDS):
        drf = serializers.Serializer.to_representation(TaskListItemSerializer(), task)
        fast = TaskListItemSerializer(task).data
        assert list(fast.items()) == list(drf.items())
    settings.TIME_ZONE = "Europe/Paris"  # answering in another zone: DRF's fields, unchanged
    with timezone.override("Europe/Paris"):
        data = TaskListItemSerializer(full).data
    assert data["created_at"].endswith("+01:00") or data["created_at"].endswith("+02:00")


def test_created_after_with_an_offset_postgresql_refuses_is_compared_in_utc(api: APIClient, tasks):
    """ISO 8601 allows offsets up to ±23:59, PostgreSQL ±15:59: the filter compares in UTC (a
    500 before), and a time past year 9999 once in UTC is a 400."""
    far = api.get("/api/tasks", {"created_after": "8119-07-01T03:14:51.82572-22:19"})
    assert far.status_code == 200, far.content
    assert far.json()["results"] == []
    past = api.get("/api/tasks", {"created_after": "2000-01-01T00:00:00-22:19"})
    assert len(past.json()["results"]) == 9
    beyond = api.get("/api/tasks", {"created_before": "9999-12-31T23:00:00-22:00"})
    assert beyond.status_code == 400
    assert beyond.json()["error"]["code"] == "validation_error"


# --- Owner lists read the owner's indexes, in order --------------------------------------------

OWNER_LED = {"task_owner_created", "task_owner_status_pending", "task_owner_dead_lettered"}


def plan_nodes(sql: str) -> list[dict[str, Any]]:
    """Every node of the plan PostgreSQL picks for `sql` (a query Django ran)."""
    with connection.cursor() as cursor:
        cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}")
        row = cursor.fetchone()
    assert row is not None
    found, todo = [], [row[0][0]["Plan"]]
    while todo:
        node = todo.pop()
        found.append(node)
        todo.extend(node.get("Plans", []))
    return found


def task_queries(client: Any, path: str) -> list[str]:
    """The SQL of the statements on the task table (counts aside) that a GET of `path` ran."""
    with CaptureQueriesContext(connection) as captured:
        response = client.get(path)
    assert response.status_code == 200, response.content[:500]
    return [
        q["sql"]
        for q in captured.captured_queries
        if '"tasks_task"' in q["sql"] and "COUNT(" not in q["sql"].upper()
    ]


def plan_nodes_without_sorting(sql: str) -> list[dict[str, Any]]:
    """The plan's nodes when PostgreSQL may neither sort nor read the table whole (unless it
    cannot do otherwise): the plan it would pick at scale, whatever a small test table's
    estimates make the cheapest."""
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_sort = off")
        cursor.execute("SET LOCAL enable_seqscan = off")
        nodes = plan_nodes(sql)
        cursor.execute("SET LOCAL enable_sort = on")
        cursor.execute("SET LOCAL enable_seqscan = on")
    return nodes


def indexes_giving_the_order(sql: str) -> set[str]:
    """The indexes PostgreSQL reads in order to give `sql` its order when it may neither sort
    (but for ties: an incremental sort reads an index in order) nor read the table whole: empty if
    it sorts anyway, because no index gives that order."""
    nodes = plan_nodes_without_sorting(sql)
    if any(node["Node Type"] == "Sort" for node in nodes):
        return set()
    return {node["Index Name"] for node in nodes if "Index Name" in node}


def owner_list_queries(api: APIClient) -> dict[str, list[str]]:
    """The SQL of an owner's lists: pages, filters, several statuses."""
    first = api.get("/api/tasks?page_size=2").json()
    second = api.get(first["next"]).json()
    paths = {
        "first page": "/api/tasks",
        "cursor page": first["next"],
        "previous page": second["previous"],
        "created_after": "/api/tasks?created_after=2000-01-01T00:00:00Z",
        "created_before": "/api/tasks?created_before=2999-01-01T00:00:00Z",
        "one status": "/api/tasks?status=succeeded",
        "status and type": "/api/tasks?status=failed&type=fetch_url",
        "two statuses": "/api/tasks?status=failed&status=queued",
        "dead-lettered": "/api/tasks?dead_lettered=true",
    }
    return {name: task_queries(api, path) for name, path in paths.items()}


def test_only_the_owners_indexes_give_an_owner_list_its_order(api: APIClient, tasks):
    """The first page was 17 ms at 1M rows: the planner walked an all-owners (-created_at, -id)
    index, expecting the owner's rows soon, and threw away 102k newer rows of other owners. Each
    owner list is read in order from an index that begins with the owner; and with those indexes
    gone, no other index could give the order (PostgreSQL has to sort), so no plan can walk an
    all-owners index instead, whatever its estimates."""
    queries = owner_list_queries(api)
    for name, statements in queries.items():
        for sql in statements:
            indexes = indexes_giving_the_order(sql)
            assert indexes, (name, sql)
            assert indexes <= OWNER_LED, (name, indexes)
    with connection.cursor() as cursor:  # rolled back with the test's transaction
        cursor.execute("DROP INDEX " + ", ".join(sorted(OWNER_LED)))
    for name, statements in queries.items():
        for sql in statements:
            assert indexes_giving_the_order(sql) == set(), (name, sql)


def test_the_admin_changelist_still_reads_an_index_in_order(admin: Client, tasks):
    """Newest first over every owner, and oldest first when staff sort by the created column,
    from task_admin_created: without an index in that order, each page sorted the whole table
    (0.7-2.3 s at 1M rows)."""
    created = task_admin.TaskAdmin.list_display.index("created_at") + 1  # after the checkbox
    for path in [CHANGELIST, f"{CHANGELIST}?o={created}", f"{CHANGELIST}?o=-{created}"]:
        (sql,) = task_queries(admin, path)
        assert "task_admin_created" in indexes_giving_the_order(sql), (path, sql)
    oldest_first = admin.get(f"{CHANGELIST}?o={created}").context["cl"].result_list
    assert [task.id for task in oldest_first] == [
        task.id for task in sorted(tasks, key=lambda task: task.created_at)
    ]


def seed_idle_owner(owner: User, busy: User, *, old: int, newer: int) -> None:
    """The bench's shape, small: all of `owner`'s tasks are older than `newer` tasks of `busy`."""
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO tasks_task (id, owner_id, type, payload, queue, status, max_retries,"
            " retries, attempts, error, progress, progress_message, dead_letter_reason,"
            " idempotency_fingerprint, created_at, updated_at)"
            " SELECT gen_random_uuid(), CASE WHEN g <= %s THEN %s ELSE %s END, 'echo', '{}',"
            " 'default', CASE WHEN g %% 10 = 0 THEN 'failed' ELSE 'succeeded' END, 3, 0, 1, '',"
            " 100, '', '', '', now() - g * interval '1 second', now() - g * interval '1 second'"
            " FROM generate_series(1, %s) AS g",
            [newer, busy.id, owner.id, newer + old],
        )
        cursor.execute("ANALYZE tasks_task")


def test_an_idle_owners_lists_read_the_owners_indexes(api: APIClient, user: User, other_user: User):
    """With its real estimates too: the planner picked the all-owners index for this shape."""
    seed_idle_owner(user, other_user, old=20_000, newer=5_000)
    queries = owner_list_queries(api)
    for name, statements in queries.items():
        for sql in statements:
            used = {node["Index Name"] for node in plan_nodes(sql) if "Index Name" in node}
            assert "task_admin_created" not in used, (name, used)
    for name in ["first page", "cursor page", "previous page"]:
        (sql,) = queries[name]
        used = {node["Index Name"] for node in plan_nodes(sql) if "Index Name" in node}
        assert used == {"task_owner_created"}, (name, used)


# --- Several statuses: one index scan per status, merged ------------------------------------------


def page_through(api: APIClient, path: str) -> tuple[list[str], list[str]]:
    """Every id following the next links; then every id again, from the last page back by the
    previous links."""
    body = api.get(path).json()
    forward = [item["id"] for item in body["results"]]
    while body["next"]:
        body = api.get(body["next"]).json()
        forward += [item["id"] for item in body["results"]]
    backward = [item["id"] for item in body["results"]]
    while body["previous"]:
        body = api.get(body["previous"]).json()
        backward = [item["id"] for item in body["results"]] + backward
    return forward, backward


def test_several_statuses_page_like_one_list(api: APIClient, user: User, other_user: User):
    statuses = [S.FAILED, S.QUEUED, S.CANCELLED, S.SUCCEEDED, S.FAILED, S.RUNNING, S.QUEUED]
    for i in range(40):
        make_task(user, status=statuses[i % len(statuses)])
    for _ in range(3):
        make_task(other_user, status=S.FAILED)

    def newest_first(*statuses: str) -> list[str]:
        mine = Task.objects.filter(owner=user, status__in=statuses).order_by("-created_at", "-id")
        return [str(task_id) for task_id in mine.values_list("id", flat=True)]

    # A failed and a queued task with the same created_at across the end of a page of 3: the
    # next page starts at an offset past the tie (DRF's cursor), which each part must count too.
    rows = list(
        Task.objects.filter(owner=user, status__in=[S.FAILED, S.QUEUED])
        .order_by("-created_at", "-id")
        .values_list("id", "status", "created_at")
    )
    at = next(i for i in range(2, len(rows) - 1, 3) if rows[i][1] != rows[i + 1][1])
    Task.objects.filter(id=rows[at + 1][0]).update(created_at=rows[at][2])

    path = "/api/tasks?status=failed&status=queued&page_size=3"
    with CaptureQueriesContext(connection) as captured:
        assert api.get(path).status_code == 200
    assert any("UNION ALL" in q["sql"] for q in captured.captured_queries)
    forward, backward = page_through(api, path)
    assert forward == backward == newest_first(S.FAILED, S.QUEUED)
    # With another filter on every part; the same status twice is one status (no union).
    typed = api.get("/api/tasks?status=failed&status=queued&type=echo&page_size=50").json()
    assert [item["id"] for item in typed["results"]] == newest_first(S.FAILED, S.QUEUED)
    assert api.get("/api/tasks?status=failed&status=queued&type=other").json()["results"] == []
    twice = api.get("/api/tasks?status=failed&status=failed&page_size=50").json()
    assert [item["id"] for item in twice["results"]] == newest_first(S.FAILED)
    every = "&".join(f"status={status}" for status in S.values)
    everything = api.get(f"/api/tasks?{every}&page_size=200").json()["results"]
    assert [item["id"] for item in everything] == newest_first(*S.values)
    bad = api.get("/api/tasks?status=failed&status=bogus")
    assert bad.status_code == 400
    assert "status" in bad.json()["error"]["fields"]


def test_several_statuses_slice_and_filter_like_one_queryset(user: User):
    """What DRF's cursor pagination does with the list: order, filter by the cursor's position,
    slice at an offset. The first `stop` rows may all come from one part."""
    for status in [S.QUEUED] + [S.FAILED] * 6 + [S.QUEUED, S.SUCCEEDED]:
        make_task(user, status=status)
    union = selectors.task_list(user=user, filters=QueryDict("status=failed&status=queued"))
    assert isinstance(union, selectors.OrderedUnion)
    plain = Task.objects.filter(owner=user, status__in=[S.FAILED, S.QUEUED])
    middle = plain.order_by("-created_at", "-id")[3].created_at
    for ordering in [("-created_at", "-id"), ("created_at", "id")]:
        for cut in [{}, {"created_at__lt": middle}, {"created_at__gt": middle}]:
            merged, single = union.order_by(*ordering).filter(**cut), plain.order_by(*ordering)
            single = single.filter(**cut)
            for start, stop in [(0, 3), (1, 4), (2, 7), (0, 20), (5, 6)]:
                assert [t.id for t in merged[start:stop]] == [t.id for t in single[start:stop]]
    with pytest.raises(TypeError):
        union.order_by("-created_at")[2]
    with pytest.raises(TypeError):
        union[0:3]  # no order asked


def test_several_statuses_read_each_status_in_index_order(api: APIClient, user: User):
    """status IN (...) cannot be read in order from (owner, status, -created_at, -id): the list
    walked the owner's rows, all of them when no task was in those states (1.5 s at 1M rows for
    ?status=queued&status=running). One part per status, each read in index order, merged."""
    for status in [S.FAILED, S.QUEUED, S.SUCCEEDED, S.RUNNING]:
        make_task(user, status=status)
    for path in [
        "/api/tasks?status=queued&status=running",
        "/api/tasks?status=failed&status=succeeded&type=echo",
    ]:
        (sql,) = task_queries(api, path)
        assert indexes_giving_the_order(sql) <= OWNER_LED, sql
        assert indexes_giving_the_order(sql), sql
        # Merged in order, never sorted: on four rows the planner may find a sort cheaper (its
        # estimates follow the earlier tests' rows), which is not the question here.
        merged = plan_nodes_without_sorting(sql)
        assert any(node["Node Type"] == "Merge Append" for node in merged), sql
