"""The one transition function: legal moves only, conditional, with a history row each."""

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apps.tasks.models import Task, TaskStatusChange
from apps.tasks.states import TRANSITIONS, TaskStatus
from apps.tasks.transitions import (
    AttemptFinish,
    AttemptStart,
    IllegalTransition,
    Sql,
    transition,
    transition_one,
    transition_one_moved,
)
from tests.support.concurrency import at_once
from tests.tasks.factories import make_task

S = TaskStatus


@pytest.mark.parametrize(
    ("source", "target"),
    [(s, t) for s in S for t in S if t not in TRANSITIONS[s] and s != t],
)
def test_every_illegal_move_is_refused_before_touching_the_database(source, target):
    with pytest.raises(IllegalTransition):
        transition(task_id=uuid.uuid4(), to=target, allowed_from={source})


def test_a_legal_move_updates_the_row_and_writes_history(user):
    task = make_task(user)
    moved = transition_one(
        task_id=task.id, to=S.CANCELLED, allowed_from={S.QUEUED}, actor_id=user.id, note="why"
    )
    assert moved is not None
    assert moved.previous_status == S.QUEUED
    assert moved.task.status == S.CANCELLED
    task.refresh_from_db()
    assert task.status == S.CANCELLED
    change = TaskStatusChange.objects.get(task=task)
    assert (change.from_status, change.to_status, change.actor_id, change.note) == (
        S.QUEUED,
        S.CANCELLED,
        user.id,
        "why",
    )


def test_a_move_from_the_wrong_state_changes_nothing(user):
    task = make_task(user, status=S.SUCCEEDED)
    assert transition_one(task_id=task.id, to=S.CANCELLED, allowed_from={S.QUEUED}) is None
    task.refresh_from_db()
    assert task.status == S.SUCCEEDED
    assert not TaskStatusChange.objects.filter(task=task).exists()


def test_extra_conditions_must_hold(user):
    task = make_task(user)
    moved = transition_one(
        task_id=task.id,
        to=S.CANCELLED,
        allowed_from={S.QUEUED},
        where="AND t.dispatch_id = %s",
        where_params=(str(uuid.uuid4()),),
    )
    assert moved is None


@pytest.mark.parametrize("wait_for_disk", [True, False])
def test_without_returning_the_same_move_is_made_and_only_its_previous_status_read(
    user, wait_for_disk
):
    """The worker's finish reads nothing back: the row, its history and its attempt are
    written as with the row returned."""
    task = make_task(user)
    assert transition_one(
        task_id=task.id, to=S.RUNNING, allowed_from={S.QUEUED}, attempt=AttemptStart("w1")
    )
    finish = {
        "task_id": task.id,
        "to": S.SUCCEEDED,
        "allowed_from": {S.RUNNING},
        "changes": {"result": {"ok": True}},
        "attempt": AttemptFinish(outcome="succeeded"),
        "note": "done",
        "wait_for_disk": wait_for_disk,
    }

    assert transition(**finish, returning=False) == [S.RUNNING]
    assert transition(**finish, returning=False) == []  # moved already: nothing to move
    assert transition_one_moved(**finish) is False

    task.refresh_from_db()
    assert (task.status, task.result) == (S.SUCCEEDED, {"ok": True})
    attempt = task.attempt_rows.get()
    assert (attempt.outcome, attempt.finished_at is not None) == ("succeeded", True)
    assert list(
        TaskStatusChange.objects.filter(task=task)
        .order_by("at", "id")
        .values_list("from_status", "to_status", "note")
    ) == [(S.QUEUED, S.RUNNING, ""), (S.RUNNING, S.SUCCEEDED, "done")]


def test_with_columns_only_those_are_read_back_and_the_rest_loads_on_access(user):
    """The worker's claim reads back what running the task needs; the other fields are
    deferred, as with QuerySet.only(): still right, at the cost of a query."""
    task = make_task(user)
    moved = transition_one(
        task_id=task.id,
        to=S.RUNNING,
        allowed_from={S.QUEUED},
        changes={"attempts": Sql("t.attempts + 1"), "started_at": Sql("statement_timestamp()")},
        attempt=AttemptStart("w1"),
        columns=("id", "status", "payload", "attempts"),
        wait_for_disk=False,
    )
    assert moved is not None and moved.previous_status == S.QUEUED
    claimed = moved.task
    assert (claimed.status, claimed.payload, claimed.attempts) == (S.RUNNING, task.payload, 1)
    assert "created_at" in claimed.get_deferred_fields()
    assert "payload" not in claimed.get_deferred_fields()
    with CaptureQueriesContext(connection) as queries:
        assert claimed.created_at == task.created_at
        assert claimed.started_at is not None  # set by the claim, read from the row
    assert len(queries) == 2


def test_columns_must_be_task_fields_and_include_the_id(user):
    task = make_task(user)
    for columns in [("status",), ("id", "colour")]:
        with pytest.raises(ValueError, match="columns must name Task fields"):
            transition(task_id=task.id, to=S.CANCELLED, allowed_from={S.QUEUED}, columns=columns)
    task.refresh_from_db()
    assert task.status == S.QUEUED


def test_json_fields_come_back_as_python_values(user):
    task = make_task(user)
    moved = transition_one(
        task_id=task.id,
        to=S.RUNNING,
        allowed_from={S.QUEUED},
        changes={"result": {"a": [1, 2]}, "payload": {"x": "y"}},
    )
    assert moved is not None
    assert moved.task.result == {"a": [1, 2]}
    assert moved.task.payload == {"x": "y"}


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_claims_only_one_wins(user):
    task = make_task(user)
    winners = at_once(
        lambda: transition_one(task_id=task.id, to=S.RUNNING, allowed_from={S.QUEUED}) is not None,
        8,
    )
    assert sorted(winners) == [False] * 7 + [True]
    assert TaskStatusChange.objects.filter(task=task, to_status=S.RUNNING).count() == 1


def _synchronous_commit() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW synchronous_commit")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_move_that_need_not_wait_for_the_disk_turns_synchronous_commit_off_for_itself_only(
    user,
):
    from django.db import transaction

    first, second, untouched = (make_task(user) for _ in range(3))
    with transaction.atomic():
        moved = transition_one(
            task_id=first.id, to=S.RUNNING, allowed_from={S.QUEUED}, wait_for_disk=False
        )
        assert moved is not None
        assert _synchronous_commit() == "off"  # this transaction commits without the flush
    assert _synchronous_commit() == "on"  # and the session is back to the default

    with transaction.atomic():
        assert transition_one(task_id=second.id, to=S.RUNNING, allowed_from={S.QUEUED})
        assert _synchronous_commit() == "on"

    with transaction.atomic():  # nothing moved: nothing to commit, the option is not set
        assert (
            transition_one(
                task_id=untouched.id,
                to=S.SUCCEEDED,
                allowed_from={S.RUNNING},
                wait_for_disk=False,
            )
            is None
        )
        assert _synchronous_commit() == "on"
    first.refresh_from_db()
    assert first.status == S.RUNNING


def _prepared_transitions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements "
            "WHERE position('WITH old AS' in statement) > 0"
        )
        return cursor.fetchone()[0]


def test_transitions_run_as_prepared_statements(user, settings):
    settings.DATABASE_PREPARED_STATEMENTS = True
    before = _prepared_transitions()
    for _ in range(3):
        assert transition_one(task_id=make_task(user).id, to=S.RUNNING, allowed_from={S.QUEUED})
    assert _prepared_transitions() == before + 1  # one statement, prepared once, run three times


def test_without_prepared_statements_transitions_still_work(user, settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    before = _prepared_transitions()
    task = make_task(user)
    assert transition_one(task_id=task.id, to=S.CANCELLED, allowed_from={S.QUEUED}, note="x")
    assert _prepared_transitions() == before
    assert Task.objects.get(id=task.id).status == S.CANCELLED


def test_a_prepared_transition_survives_a_column_added_by_a_later_migration(user, settings):
    """Workers still running the old code keep their prepared statements while a new release
    migrates: a statement returning `t.*` would then fail ("cached plan must not change result
    type")."""
    settings.DATABASE_PREPARED_STATEMENTS = True
    assert transition_one(task_id=make_task(user).id, to=S.RUNNING, allowed_from={S.QUEUED})
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending FK checks before the DDL
        cursor.execute("ALTER TABLE tasks_task ADD COLUMN added_later integer")  # rolled back
    moved = transition_one(task_id=make_task(user).id, to=S.RUNNING, allowed_from={S.QUEUED})
    assert moved is not None and moved.task.status == S.RUNNING
