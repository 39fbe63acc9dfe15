"""The outbox row is written by the terminal transition itself: one per ending, none otherwise."""

from apps.callbacks.models import TaskCallback
from apps.tasks.execution import handle_batch, handle_delivery
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.tasks.factories import create_task

S = TaskStatus
URL = "https://hooks.example.com/done"


def run(task: Task) -> str:
    task.refresh_from_db()
    outcome = handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    return str(outcome.status)


def rows(task: Task) -> list[tuple[str, str, int]]:
    return list(TaskCallback.objects.filter(task=task).values_list("status", "url", "attempts"))


def test_a_task_that_succeeds_owes_one_callback(user):
    task = create_task(user, "echo", {"n": 1}, callback_url=URL)
    assert rows(task) == []  # created: nothing owed
    assert run(task) == S.SUCCEEDED
    assert rows(task) == [(S.SUCCEEDED, URL, 0)]
    callback = TaskCallback.objects.get(task=task)
    assert callback.next_attempt_at is not None
    assert callback.delivered_at is None and callback.failed_at is None
    assert callback.created_at == Task.objects.get(id=task.id).finished_at  # one statement


def test_a_task_that_fails_owes_one_callback(user):
    task = create_task(user, "test_permanent", {}, callback_url=URL)
    assert run(task) == S.FAILED
    assert rows(task) == [(S.FAILED, URL, 0)]


def test_a_retry_is_not_an_ending(user):
    task = create_task(user, "test_flaky", {"fail_times": 1}, callback_url=URL)
    assert run(task) == S.RETRYING
    assert rows(task) == []


def test_a_queued_task_cancelled_through_the_api_owes_one_callback(user, api):
    task = create_task(user, "echo", {}, callback_url=URL)
    response = api.post(f"/api/tasks/{task.id}/cancel")
    assert response.status_code == 200, response.content
    assert response.json()["status"] == S.CANCELLED
    assert rows(task) == [(S.CANCELLED, URL, 0)]


def test_a_task_without_a_callback_url_owes_nothing(user, api):
    done = create_task(user, "echo", {})
    cancelled = create_task(user, "echo", {})
    assert run(done) == S.SUCCEEDED
    api.post(f"/api/tasks/{cancelled.id}/cancel")
    assert not TaskCallback.objects.exists()


def test_a_batch_finish_writes_one_row_per_task_with_a_callback(user):
    tasks = [
        create_task(user, "test_batched", {"n": n}, callback_url=URL if n % 2 else "")
        for n in range(4)
    ]
    for task in tasks:
        task.refresh_from_db()
    outcomes = handle_batch(
        task_type="test_batched",
        pairs=[(str(t.id), str(t.dispatch_id)) for t in tasks],
        redelivered=False,
        worker="w",
        queue="default",
    )
    assert [o.status for _, _, o in outcomes] == [S.SUCCEEDED] * 4
    assert [rows(t) for t in tasks] == [[], [(S.SUCCEEDED, URL, 0)], [], [(S.SUCCEEDED, URL, 0)]]


def test_a_task_retried_by_hand_and_ended_again_owes_a_second_callback(user, api):
    task = create_task(user, "test_permanent", {}, callback_url=URL)
    assert run(task) == S.FAILED
    assert api.post(f"/api/tasks/{task.id}/retry").status_code == 200
    assert run(task) == S.FAILED
    assert rows(task) == [(S.FAILED, URL, 0), (S.FAILED, URL, 0)]
