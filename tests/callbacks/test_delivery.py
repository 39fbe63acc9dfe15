"""Delivery in process: the dispatch and the delivery called directly, against a real receiver."""

import json
import threading
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from apps.callbacks import services
from apps.callbacks.models import TaskCallback
from apps.handlers.signing import verify
from apps.tasks.execution import handle_delivery
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.tasks.factories import create_task

S = TaskStatus


def ended_with_callback(user, url: str, type: str = "echo", payload=None) -> TaskCallback:
    task = create_task(user, type, payload or {"n": 7}, callback_url=url)
    task.refresh_from_db()
    handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    return TaskCallback.objects.get(task=task)


def dispatched_ids() -> list[int]:
    """What one dispatch run leases (the messages it publishes after commit)."""
    before = {c.id: c.next_attempt_at for c in TaskCallback.objects.all()}
    services.dispatch_due_callbacks()
    after = {c.id: c.next_attempt_at for c in TaskCallback.objects.all()}
    return sorted(i for i in after if after[i] != before.get(i))


def test_a_callback_is_posted_signed_and_recorded_delivered(user, api, receiver):
    callback = ended_with_callback(user, receiver.url("/ok"))
    assert dispatched_ids() == [callback.id]
    assert dispatched_ids() == []  # leased: not dispatched twice
    assert services.deliver_callback(callback.id) == "delivered"

    [post] = receiver.posts
    task = Task.objects.get(id=callback.task_id)
    assert task.finished_at is not None
    assert post.path == "/ok"
    assert post.json == {
        "event": "task.succeeded",
        "task": {
            "id": str(task.id),
            "type": "echo",
            "status": "succeeded",
            "result": {"n": 7},
            "error": "",
            "attempts": 1,
            "created_at": task.created_at.isoformat().replace("+00:00", "Z"),
            "finished_at": task.finished_at.isoformat().replace("+00:00", "Z"),
        },
    }
    assert post.headers["X-TaskFlow-Event"] == "task.succeeded"
    assert post.headers["X-TaskFlow-Delivery"] == str(callback.id)
    secret = api.get("/api/callbacks/secret").json()["secret"]
    assert verify(secret, post.headers["X-TaskFlow-Signature"], post.body)
    assert not verify(secret + "0", post.headers["X-TaskFlow-Signature"], post.body)

    callback.refresh_from_db()
    assert callback.delivered_at is not None and callback.failed_at is None
    assert (callback.attempts, callback.last_status_code, callback.last_error) == (1, 200, "")
    assert services.deliver_callback(callback.id) == "skipped"  # settled: never sent again
    assert dispatched_ids() == []
    assert len(receiver.posts) == 1


def test_a_failed_post_is_retried_with_backoff_and_delivered_on_the_second(
    user, receiver, settings
):
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 0.2
    settings.CALLBACK_BACKOFF_CAP_SECONDS = 0.4
    callback = ended_with_callback(user, receiver.url("/flaky/1"))
    assert dispatched_ids() == [callback.id]
    before = timezone.now()
    assert services.deliver_callback(callback.id) == "retrying"
    callback.refresh_from_db()
    assert (callback.attempts, callback.last_status_code) == (1, 500)
    assert callback.last_error.startswith("answered 500")
    assert len(callback.last_error) < 400  # a short excerpt of the 5000-byte body
    # The backoff replaced the lease: due within the first retry's ceiling (the base).
    assert before <= callback.next_attempt_at <= timezone.now() + timedelta(seconds=0.2)
    TaskCallback.objects.filter(id=callback.id).update(next_attempt_at=timezone.now())
    assert dispatched_ids() == [callback.id]
    assert services.deliver_callback(callback.id) == "delivered"
    callback.refresh_from_db()
    assert (callback.attempts, callback.last_status_code, callback.last_error) == (2, 200, "")
    assert callback.delivered_at is not None
    assert [p.path for p in receiver.posts] == ["/flaky/1", "/flaky/1"]


def test_the_backoff_grows_with_each_attempt(user, receiver, settings, monkeypatch):
    settings.CALLBACK_BACKOFF_BASE_SECONDS = 10
    settings.CALLBACK_BACKOFF_CAP_SECONDS = 10_000
    monkeypatch.setattr("random.uniform", lambda low, high: high)  # the ceiling, every time
    callback = ended_with_callback(user, receiver.url("/status/503"))
    waits = []
    for _ in range(3):
        before = timezone.now()
        services.deliver_callback(callback.id)
        callback.refresh_from_db()
        waits.append(round((callback.next_attempt_at - before).total_seconds()))
    assert waits == [10, 20, 40]


def test_a_receiver_that_always_fails_is_given_up_after_the_max_attempts(user, receiver, settings):
    settings.CALLBACK_MAX_ATTEMPTS = 3
    callback = ended_with_callback(user, receiver.url("/status/404"))
    outcomes = [services.deliver_callback(callback.id) for _ in range(4)]
    assert outcomes == ["retrying", "retrying", "failed", "skipped"]
    callback.refresh_from_db()
    assert callback.failed_at is not None and callback.delivered_at is None
    assert (callback.attempts, callback.last_status_code) == (3, 404)
    assert len(receiver.posts) == 3
    assert dispatched_ids() == []


def test_a_url_that_resolves_to_a_private_address_is_refused_at_delivery(user, receiver_unallowed):
    # A name, not a literal: accepted at create; what it resolves to is checked at each POST.
    callback = ended_with_callback(user, receiver_unallowed.url("/ok", host="localhost"))
    assert services.deliver_callback(callback.id) == "retrying"
    assert receiver_unallowed.posts == []
    callback.refresh_from_db()
    assert "SSRF guard" in callback.last_error
    assert (callback.attempts, callback.last_status_code, callback.delivered_at) == (1, None, None)


def test_a_redirect_is_not_followed(user, receiver):
    callback = ended_with_callback(user, receiver.url("/status/302"))
    assert services.deliver_callback(callback.id) == "retrying"
    callback.refresh_from_db()
    assert "redirect" in callback.last_error
    assert [p.path for p in receiver.posts] == ["/status/302"]  # not /ok


def test_a_post_cut_by_the_soft_time_limit_counts_as_an_attempt(user, receiver, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    callback = ended_with_callback(user, receiver.url("/ok"))

    def cut(*args: object) -> None:
        raise SoftTimeLimitExceeded()  # what the worker raises in the task at its soft limit

    monkeypatch.setattr(services, "_post", cut)
    assert services.deliver_callback(callback.id) == "retrying"
    callback.refresh_from_db()
    assert callback.attempts == 1
    assert "time limit" in callback.last_error


@pytest.mark.django_db(transaction=True)
def test_two_dispatch_runs_at_once_enqueue_one_delivery(user, broker, monkeypatch):
    """The first run holds its lease uncommitted while the second runs whole: the second skips
    the row, and after the first commits it is leased; one deliver message in all."""
    callback = ended_with_callback(user, "https://hooks.example.com/once")
    broker.purge_all()  # the task's own execution message
    claim = services._claim_due
    claimed, second_done = threading.Event(), threading.Event()
    counts: dict[str, int] = {}

    def first_claim(limit: int) -> list[tuple[int, str]]:
        ids = claim(limit)
        if threading.current_thread().name == "first":
            claimed.set()
            second_done.wait(timeout=10)  # the transaction stays open meanwhile
        return ids

    monkeypatch.setattr(services, "_claim_due", first_claim)

    def dispatch() -> None:
        try:
            counts[threading.current_thread().name] = services.dispatch_due_callbacks()
        finally:
            second_done.set()
            connection.close()

    first = threading.Thread(target=dispatch, name="first")
    first.start()
    assert claimed.wait(timeout=10)
    second = threading.Thread(target=dispatch, name="second")
    second.start()
    second.join(timeout=20)
    first.join(timeout=20)
    assert counts == {"first": 1, "second": 0}
    assert services.dispatch_due_callbacks() == 0  # leased
    [message] = broker.drain("io")
    assert json.loads(message.body)[0][0] == callback.id  # with its lease


def test_a_second_message_for_one_callback_neither_posts_again_nor_skips_the_backoff(
    user, receiver, broker, django_capture_on_commit_callbacks
):
    """A deliver message can wait in the io queue past its lease (a backlog): the row is then
    dispatched again and two messages name it. Only one of them POSTs; the other must not send
    a second POST at once (ignoring the backoff the first set) nor burn an attempt."""
    from apps.callbacks.tasks import deliver

    callback = ended_with_callback(user, receiver.url("/status/500"))
    broker.purge_all()
    with django_capture_on_commit_callbacks(execute=True):
        services.dispatch_due_callbacks()
    # The first message is still queued when its lease runs out: dispatched again.
    TaskCallback.objects.filter(id=callback.id).update(
        next_attempt_at=timezone.now() - timedelta(seconds=1)
    )
    with django_capture_on_commit_callbacks(execute=True):
        services.dispatch_due_callbacks()
    messages = broker.drain("io")
    assert len(messages) == 2
    outcomes = [deliver(*json.loads(message.body)[0]) for message in messages]
    assert len(receiver.posts) == 1, outcomes
    callback.refresh_from_db()
    assert callback.attempts == 1


def test_a_callback_whose_task_was_retried_since_is_superseded_not_posted(user, receiver):
    """The body is the task as it is at the POST: after a retry by hand it would say `queued`
    (or the next ending) under the event of the first ending. That ending was undone; the
    task's next ending sends a callback of its own."""
    from apps.tasks.services import task_retry

    callback = ended_with_callback(user, receiver.url("/ok"), type="test_permanent", payload={})
    task = Task.objects.get(id=callback.task_id)
    assert (task.status, callback.status) == (S.FAILED, S.FAILED)
    task_retry(task=task, actor=user)

    assert services.deliver_callback(callback.id) == "superseded"
    assert receiver.posts == []
    callback.refresh_from_db()
    assert callback.failed_at is not None and callback.delivered_at is None
    assert callback.last_error.startswith("superseded")
    assert dispatched_ids() == []  # settled: never dispatched again
