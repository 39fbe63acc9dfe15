"""The attempt and history tables carry no index that another one already covers (every status
change writes them), and what the dropped indexes served is still served by an index."""

from typing import Any

import pytest
from django.db import connection

from apps.accounts.models import User
from apps.tasks.models import TaskStatusChange
from tests.tasks.factories import create_task

pytestmark = pytest.mark.django_db


def _indexes(table: str) -> dict[str, str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", [table])
        return dict(cursor.fetchall())


def _plan(sql: str, params: list[Any]) -> str:
    with connection.cursor() as cursor:
        # A tiny test table would be read sequentially anyway: ask which index the planner can use.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        return "\n".join(row[0] for row in cursor.fetchall())


def test_attempt_and_history_tables_have_no_redundant_index() -> None:
    attempt = _indexes("tasks_taskattempt")
    history = _indexes("tasks_taskstatuschange")
    assert sorted(attempt) == ["attempt_unique_number", "tasks_taskattempt_pkey"]
    assert sorted(history) == [
        "status_change_actor",
        "status_change_task_at",
        "tasks_taskstatuschange_pkey",
    ]
    assert "WHERE (actor_id IS NOT NULL)" in history["status_change_actor"]


def test_lookups_by_task_and_by_actor_still_use_an_index() -> None:
    for sql, index in (
        ("SELECT * FROM tasks_taskattempt WHERE task_id = %s", "attempt_unique_number"),
        ("SELECT * FROM tasks_taskstatuschange WHERE task_id = %s", "status_change_task_at"),
        # What ON DELETE SET NULL of a user runs.
        ("SELECT * FROM tasks_taskstatuschange WHERE actor_id = %s", "status_change_actor"),
    ):
        param: Any = 1 if "actor_id" in sql else "00000000-0000-0000-0000-000000000000"
        assert index in _plan(sql, [param]), sql


def test_deleting_a_user_clears_the_actor_of_their_changes(user: User) -> None:
    actor = User.objects.create_user(email="actor@example.com", password="x-long-password-1")
    task = create_task(user)
    TaskStatusChange.objects.filter(task=task).update(actor=actor)
    actor.delete()
    assert list(TaskStatusChange.objects.filter(task=task).values_list("actor_id", flat=True)) == [
        None
    ]
