"""The tasks admin through Django's test client: filters, search, read-only inlines, actions."""

import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.core.management import call_command
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import User
from apps.tasks.models import AttemptOutcome, Task, TaskAttempt, TaskStatusChange
from apps.tasks.queues import TaskQueue
from apps.tasks.schedules import RELEASE_SCHEDULE_NAME
from apps.tasks.states import TaskStatus
from tests.support.broker import BrokerProbe
from tests.tasks.factories import make_task

S = TaskStatus
CHANGELIST = reverse("admin:tasks_task_changelist")


def change_url(task: Task) -> str:
    return reverse("admin:tasks_task_change", args=[task.id])


def listed(response: Any) -> set[uuid.UUID]:
    assert response.status_code == 200, response.content[:2000]
    return {task.id for task in response.context["cl"].result_list}


def messages_of(response: Any) -> list[tuple[int, str]]:
    return [(m.level, m.message) for m in get_messages(response.wsgi_request)]


# --- changelist: filters, search, object tools, query count -------------------------------------


def test_changelist_filters_by_status_type_dead_letter_and_owner(admin, user, other_user):
    queued = make_task(user)
    failed = make_task(user, S.FAILED, error="boom")
    dead = make_task(
        other_user,
        S.FAILED,
        type="long_computation",
        dead_lettered_at=timezone.now(),
        dead_letter_reason="rejected from queue default",
    )

    response = admin.get(CHANGELIST)
    assert listed(response) == {queued.id, failed.id, dead.id}
    filter_titles = {spec.title for spec in response.context["cl"].filter_specs}
    assert {"status", "type", "dead-lettered"} <= filter_titles

    assert listed(admin.get(CHANGELIST, {"status__exact": S.FAILED})) == {failed.id, dead.id}
    assert listed(admin.get(CHANGELIST, {"type": "long_computation"})) == {dead.id}
    assert listed(admin.get(CHANGELIST, {"queue": TaskQueue.DEFAULT.value})) == {
        queued.id,
        failed.id,
        dead.id,
    }
    assert listed(admin.get(CHANGELIST, {"queue": TaskQueue.IO.value})) == set()
    assert listed(admin.get(CHANGELIST, {"dead_lettered": "yes"})) == {dead.id}
    assert listed(admin.get(CHANGELIST, {"dead_lettered": "no"})) == {queued.id, failed.id}
    assert listed(admin.get(CHANGELIST, {"owner__id__exact": other_user.id})) == {dead.id}
    assert listed(
        admin.get(CHANGELIST, {"status__exact": S.FAILED, "owner__id__exact": user.id})
    ) == {failed.id}


def test_the_owner_filter_lists_the_chosen_owner_not_every_user(admin, user, other_user):
    """Django's filter on the owner foreign key read and printed every user on each page load."""
    mine, theirs = make_task(user), make_task(other_user)
    for n in range(30):
        User.objects.create_user(email=f"someone-{n}@example.com")
    with CaptureQueriesContext(connection) as captured:
        response = admin.get(CHANGELIST)
    assert listed(response) == {mine.id, theirs.id}
    assert "owner" not in {spec.title for spec in response.context["cl"].filter_specs}
    users = [q["sql"] for q in captured.captured_queries if 'FROM "accounts_user"' in q["sql"]]
    assert all(" WHERE " in sql for sql in users), users
    assert b"someone-1@example.com" not in response.content

    chosen = admin.get(CHANGELIST, {"owner__id__exact": other_user.id})
    assert listed(chosen) == {theirs.id}
    [owner] = [spec for spec in chosen.context["cl"].filter_specs if spec.title == "owner"]
    assert owner.lookup_choices == [(str(other_user.id), other_user.email)]
    assert listed(admin.get(CHANGELIST, {"owner__id__exact": 10**9})) == set()
    assert listed(admin.get(CHANGELIST, {"owner__id__exact": "x"})) == set()


def digits_of(number: int, zero: str) -> str:
    """`number` in another script's decimal digits (`zero` its 0): int() reads them."""
    return "".join(chr(ord(zero) + int(d)) for d in str(number))


@pytest.mark.parametrize(
    "value",
    [
        lambda user: "\u00b2",  # isdigit() is true, int() a ValueError: it was a 500
        lambda user: digits_of(user.id, "\uff10"),  # fullwidth: int() reads the user's id
        lambda user: digits_of(user.id, "\u0660"),  # Arabic-Indic
        lambda user: "9" * 30,  # out of the id column's range
    ],
    ids=["superscript-two", "fullwidth", "arabic-indic", "out-of-range"],
)
def test_the_owner_filter_on_a_value_that_is_no_user_id_lists_no_task(admin, user, value):
    admin.raise_request_exception = False
    make_task(user)
    response = admin.get(CHANGELIST, {"owner__id__exact": value(user)})
    assert listed(response) == set()


def test_type_and_queue_filters_offer_the_registered_types_and_the_queues(admin, user):
    make_task(user)
    specs = {spec.title: spec for spec in admin.get(CHANGELIST).context["cl"].filter_specs}
    types = {value for value, _ in specs["type"].lookup_choices}
    assert {"echo", "long_computation", "test_flaky"} <= types
    assert {value for value, _ in specs["queue"].lookup_choices} == {q.value for q in TaskQueue}


def test_changelist_shows_the_dead_letter_reason(admin, user):
    make_task(
        user, S.FAILED, dead_lettered_at=timezone.now(), dead_letter_reason="rejected from default"
    )
    response = admin.get(CHANGELIST)
    assert response.status_code == 200
    assert "rejected from default" in response.content.decode()


def test_search_by_task_id_and_by_owner_email(admin, user, other_user):
    mine = make_task(user)
    theirs = make_task(other_user)

    assert listed(admin.get(CHANGELIST, {"q": str(mine.id)})) == {mine.id}
    assert listed(admin.get(CHANGELIST, {"q": str(theirs.id).upper()})) == {theirs.id}
    assert listed(admin.get(CHANGELIST, {"q": f" {theirs.id.hex} "})) == {theirs.id}
    assert listed(admin.get(CHANGELIST, {"q": "bob@example.com"})) == {theirs.id}
    assert listed(admin.get(CHANGELIST, {"q": "alice@"})) == {mine.id}
    assert listed(admin.get(CHANGELIST, {"q": "nobody@example.com"})) == set()
    assert listed(admin.get(CHANGELIST, {"q": str(uuid.uuid4())})) == set()


def test_changelist_links_to_the_dead_lettered_tasks(admin, user):
    response = admin.get(CHANGELIST)
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="{CHANGELIST}?dead_lettered=yes"' in html
    assert "Dead-lettered tasks" in html
    # Tasks are created through the API (which validates payloads), never in the admin.
    assert reverse("admin:tasks_task_add") not in html


def test_changelist_query_count_does_not_grow_with_the_tasks(
    admin, user, other_user, django_assert_max_num_queries
):
    owners = [user, other_user] + [
        User.objects.create_user(email=f"user{i}@example.com", password="x-password-1")
        for i in range(8)
    ]
    for i in range(30):
        make_task(owners[i % len(owners)], [S.QUEUED, S.FAILED, S.SUCCEEDED][i % 3])

    # session, user, owner filter's users, the table's row estimate and (below
    # EXACT_COUNT_BELOW rows) the count, one page of tasks with their owners, and the type
    # filter's task types (each process caches them a few seconds): not 30+.
    with django_assert_max_num_queries(7) as queries:
        response = admin.get(CHANGELIST)
    assert len(listed(response)) == 30
    page = [
        q["sql"] for q in queries.captured_queries if 'FROM "tasks_task" INNER JOIN' in q["sql"]
    ]
    assert len(page) == 1
    # The list leaves out the columns it does not show, which may be large.
    assert '"tasks_task"."payload"' not in page[0]
    assert '"tasks_task"."result"' not in page[0]
    with django_assert_max_num_queries(5):
        response = admin.get(CHANGELIST, {"q": "example.com", "status__exact": S.FAILED})
    assert len(listed(response)) == 10


# --- change page: read-only, with attempts and history inline -----------------------------------


@pytest.fixture
def task_with_history(user: User) -> Task:
    now = timezone.now()
    task = make_task(user, S.FAILED, attempts=2, error="planned failure 2")
    TaskAttempt.objects.create(
        task=task,
        number=1,
        outcome=AttemptOutcome.FAILED,
        worker="worker@host-one",
        started_at=now - timedelta(seconds=3),
        finished_at=now - timedelta(seconds=2),
        error="planned failure 1",
    )
    TaskAttempt.objects.create(
        task=task,
        number=2,
        outcome=AttemptOutcome.FAILED,
        worker="worker@host-two",
        started_at=now - timedelta(seconds=1),
        finished_at=now,
        error="planned failure 2",
    )
    for from_status, to_status, note in [
        ("", S.QUEUED, "created"),
        (S.QUEUED, S.RUNNING, "claimed by worker@host-one"),
        (S.RUNNING, S.FAILED, "no retries left"),
    ]:
        TaskStatusChange.objects.create(
            task=task, from_status=from_status, to_status=to_status, at=now, note=note
        )
    return task


def test_change_page_shows_attempts_and_history_read_only(admin, task_with_history):
    response = admin.get(change_url(task_with_history))
    assert response.status_code == 200
    html = response.content.decode()
    for text in ["worker@host-one", "worker@host-two", "planned failure 1", "claimed by worker@"]:
        assert text in html

    inlines = {formset.opts.model: formset for formset in response.context["inline_admin_formsets"]}
    assert set(inlines) == {TaskAttempt, TaskStatusChange}
    for formset in inlines.values():
        assert not formset.has_add_permission
        assert not formset.has_change_permission
        assert not formset.has_delete_permission
        assert not formset.formset.can_delete
    assert len(inlines[TaskAttempt].formset.forms) == 2
    assert len(inlines[TaskStatusChange].formset.forms) == 3

    # No editable input for the task or its inlines; no save or delete buttons.
    assert 'name="attempt_rows-0-error"' not in html
    assert 'name="status_changes-0-note"' not in html
    assert 'name="status"' not in html
    assert 'name="_save"' not in html
    assert reverse("admin:tasks_task_delete", args=[task_with_history.id]) not in html


def test_change_page_query_count_does_not_grow_with_the_history(
    admin, user, other_user, django_assert_max_num_queries
):
    task = make_task(user, S.SUCCEEDED, attempts=10)
    now = timezone.now()
    for number in range(1, 11):
        TaskAttempt.objects.create(
            task=task, number=number, outcome=AttemptOutcome.FAILED, worker="w", started_at=now
        )
        actor = user if number % 2 else other_user
        TaskStatusChange.objects.create(
            task=task, from_status=S.QUEUED, to_status=S.RUNNING, at=now, actor=actor
        )

    # session, user, task, attempts, history joined with its actors, the content type (for the
    # History link) and the task's owner: seven, not one per history row.
    with django_assert_max_num_queries(7):
        response = admin.get(change_url(task))
    assert response.status_code == 200
    assert response.content.decode().count("bob@example.com") == 5


def test_change_page_refuses_a_post(admin, task_with_history):
    response = admin.post(change_url(task_with_history), {"status": S.SUCCEEDED, "error": ""})
    assert response.status_code == 403
    task_with_history.refresh_from_db()
    assert task_with_history.status == S.FAILED
    assert task_with_history.error == "planned failure 2"


def test_tasks_cannot_be_added_or_deleted_in_the_admin(admin, task_with_history):
    assert admin.get(reverse("admin:tasks_task_add")).status_code == 403
    delete = reverse("admin:tasks_task_delete", args=[task_with_history.id])
    assert admin.post(delete, {"post": "yes"}).status_code == 403
    assert Task.objects.filter(id=task_with_history.id).exists()
    action_form = admin.get(CHANGELIST).context["action_form"]
    actions = [name for name, _ in action_form.fields["action"].choices]
    assert "delete_selected" not in actions
    assert {"retry_tasks", "cancel_tasks"} <= set(actions)


# --- actions ------------------------------------------------------------------------------------


def run_action(admin: Client, action: str, tasks: list[Task]) -> Any:
    return admin.post(
        CHANGELIST,
        {"action": action, "_selected_action": [str(t.id) for t in tasks], "index": 0},
        follow=True,
    )


def test_an_action_on_ids_that_are_no_task_ids_ignores_them(admin, user):
    """A selected id that is no UUID was a ValidationError from the pk__in filter: a 500."""
    admin.raise_request_exception = False
    queued = make_task(user)
    response = admin.post(
        CHANGELIST,
        {"action": "cancel_tasks", "_selected_action": ["not-a-uuid", "\x00"], "index": 0},
        follow=True,
    )
    assert response.status_code == 200
    assert [level for level, _ in messages_of(response)] == [30]  # "Items must be selected"
    queued.refresh_from_db()
    assert queued.status == S.QUEUED

    response = admin.post(
        CHANGELIST,
        {"action": "cancel_tasks", "_selected_action": ["not-a-uuid", str(queued.id)], "index": 0},
        follow=True,
    )
    assert (25, "Cancelled 1 task(s).") in messages_of(response)
    queued.refresh_from_db()
    assert queued.status == S.CANCELLED


def test_retry_action_requeues_failed_tasks_and_records_the_staff_user(
    admin, staff, user, broker: BrokerProbe, django_capture_on_commit_callbacks
):
    failed = make_task(
        user,
        S.FAILED,
        retries=3,
        error="boom",
        finished_at=timezone.now(),
        dead_lettered_at=timezone.now(),
        dead_letter_reason="rejected",
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = run_action(admin, "retry_tasks", [failed])

    assert response.status_code == 200
    assert (25, "Retried 1 task(s).") in messages_of(response)  # messages.SUCCESS
    failed.refresh_from_db()
    assert failed.status == S.QUEUED
    assert (failed.retries, failed.dead_lettered_at, failed.finished_at) == (0, None, None)
    change = TaskStatusChange.objects.get(task=failed)
    assert (change.from_status, change.to_status, change.actor_id) == (S.FAILED, S.QUEUED, staff.id)
    assert change.note == "replayed from the dead-letter queue"
    # Published after commit to the task's queue, and confirmed.
    assert broker.depth(TaskQueue.DEFAULT.value) == 1
    assert failed.published_at is not None


def test_cancel_action_cancels_queued_and_refuses_succeeded_with_a_warning(admin, staff, user):
    queued = make_task(user)
    succeeded = make_task(user, S.SUCCEEDED, finished_at=timezone.now())

    response = run_action(admin, "cancel_tasks", [queued, succeeded])

    assert response.status_code == 200
    messages = messages_of(response)
    assert (25, "Cancelled 1 task(s).") in messages
    warnings = [text for level, text in messages if level == 30]  # messages.WARNING
    assert len(warnings) == 1
    assert str(succeeded.id) in warnings[0]
    assert "only a waiting or running task can be cancelled" in warnings[0]
    queued.refresh_from_db()
    succeeded.refresh_from_db()
    assert (queued.status, succeeded.status) == (S.CANCELLED, S.SUCCEEDED)
    change = TaskStatusChange.objects.get(task=queued)
    assert (change.from_status, change.to_status, change.actor_id) == (
        S.QUEUED,
        S.CANCELLED,
        staff.id,
    )
    assert not TaskStatusChange.objects.filter(task=succeeded).exists()


def test_cancel_action_asks_a_running_task_to_stop(admin, staff, user):
    running = make_task(user, S.RUNNING, attempts=1)

    response = run_action(admin, "cancel_tasks", [running])

    messages = messages_of(response)
    assert (25, "Cancelled 1 task(s).") in messages
    assert any(level == 20 and "asked to stop" in text for level, text in messages)  # INFO
    running.refresh_from_db()
    assert running.status == S.RUNNING
    assert running.cancel_requested_at is not None
    change = TaskStatusChange.objects.get(task=running)
    assert (change.to_status, change.actor_id) == (S.RUNNING, staff.id)


def test_retry_action_refuses_a_queued_task_with_a_warning(admin, user):
    queued = make_task(user)
    response = run_action(admin, "retry_tasks", [queued])
    assert response.status_code == 200
    assert [level for level, _ in messages_of(response)] == [30]
    queued.refresh_from_db()
    assert queued.status == S.QUEUED


# --- hostile query strings ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "type=%00",
        "queue=%00",
        "status__exact=%00",
        "status=%00",
        "owner__id__exact=%00",
        "q=%00",
        "q=abc%00def",
        "o=%00",
        "%00=1",
    ],
)
def test_a_nul_character_in_the_query_string_is_400_not_500(admin, user, query):
    """PostgreSQL cannot hold NUL: a filter or a search with one was a DataError or a ValueError
    from the database layer (a 500)."""
    admin.raise_request_exception = False
    make_task(user)
    response = admin.get(f"{CHANGELIST}?{query}")
    assert response.status_code == 400, response.status_code
    assert response.json()["error"]["code"] == "bad_request"


def test_a_nul_character_is_refused_on_every_admin_page(admin):
    admin.raise_request_exception = False
    for path in ["/admin/", "/admin/accounts/user/", "/admin/dashboard/"]:
        assert admin.get(f"{path}?q=%00").status_code == 400, path
        assert admin.get(path).status_code == 200, path


# --- beat's schedule, and who may come in -------------------------------------------------------


def test_beat_admin_lists_the_release_schedule_after_setup_broker(admin):
    call_command("setup_broker")
    response = admin.get(reverse("admin:django_celery_beat_periodictask_changelist"))
    assert response.status_code == 200
    assert [task.name for task in response.context["cl"].result_list] == [RELEASE_SCHEDULE_NAME]
    assert RELEASE_SCHEDULE_NAME in response.content.decode()


@pytest.mark.parametrize("path", [CHANGELIST, "/admin/"])
def test_a_non_staff_user_is_sent_to_the_admin_login(user, path):
    client = Client()
    client.force_login(user)
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))
    assert f"next={path}" in response["Location"]


def test_an_anonymous_visitor_is_sent_to_the_admin_login(db):
    response = Client().get(CHANGELIST)
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_who_may_only_view_tasks_get_no_actions(db, user):
    viewer = User.objects.create_user(
        email="viewer@example.com", password="viewer-password-1", is_staff=True
    )
    viewer.user_permissions.add(Permission.objects.get(codename="view_task"))
    client = Client()
    client.force_login(viewer)
    make_task(user, S.FAILED)

    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert response.context["action_form"] is None  # no action at all: nothing to select

    failed = Task.objects.get()
    refused = client.post(
        CHANGELIST, {"action": "retry_tasks", "_selected_action": [str(failed.id)], "index": 0}
    )
    assert refused.status_code in (200, 302)
    failed.refresh_from_db()
    assert failed.status == S.FAILED


def test_staff_with_the_change_permission_may_run_the_actions(db, user):
    operator = User.objects.create_user(
        email="operator@example.com", password="operator-password-1", is_staff=True
    )
    operator.user_permissions.add(Permission.objects.get(codename="change_task"))
    client = Client()
    client.force_login(operator)
    queued = make_task(user)

    response = run_action(client, "cancel_tasks", [queued])

    assert (25, "Cancelled 1 task(s).") in messages_of(response)
    queued.refresh_from_db()
    assert queued.status == S.CANCELLED
    # Still read-only: the change permission only unlocks the actions.
    assert client.get(change_url(queued)).context["has_change_permission"] is False
