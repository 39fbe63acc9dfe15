"""The hot reads at scale: no read counts the whole task table, and the admin changelist counts
from PostgreSQL's estimate when it is unfiltered (docs/benchmarks.md, "Reads at 1,000,000 rows")."""

import re
from datetime import timedelta
from typing import Any

import pytest
from django.db import connection
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
