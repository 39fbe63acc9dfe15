"""Real processes: beat dispatches the callback of a task a worker finished, worker-io POSTs it."""

import pytest

from apps.callbacks import services
from apps.callbacks.models import TaskCallback
from apps.handlers.signing import verify
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.support import processes
from tests.support.wait import wait_for
from tests.tasks.factories import create_task


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_a_finished_task_is_posted_to_its_callback_url_by_the_io_worker(user, broker, receiver):
    environment = processes.test_environment(
        SSRF_ALLOWED_NETWORKS="127.0.0.0/8",  # the receiver is on loopback
        WORKER_CONCURRENCY="1",
        IO_WORKER_MAX="2",
        IO_WORKER_MIN="1",
    )
    started = processes.start_all(("beat", "worker", "worker-io"), environment)
    try:
        task = create_task(user, "echo", {"hello": "world"}, callback_url=receiver.url("/ok"))
        posts = wait_for(lambda: receiver.posts, timeout=60, interval=0.1, what="the callback")
        delivered = TaskCallback.objects.filter(task=task, delivered_at__isnull=False)
        wait_for(delivered.exists, timeout=30, interval=0.1, what="the callback recorded")
        logs = processes.dump_logs(started)
    finally:
        processes.stop_all(started)

    [post] = posts
    assert post.json["event"] == "task.succeeded"
    assert post.json["task"]["id"] == str(task.id)
    assert post.json["task"]["result"] == {"hello": "world"}
    assert Task.objects.get(id=task.id).status == TaskStatus.SUCCEEDED
    secret = services.user_signing_secret(user.id)
    assert verify(secret, post.headers["X-TaskFlow-Signature"], post.body)
    assert "callbacks.deliver" in started["worker-io"].log(), logs
    assert TaskCallback.objects.get(task=task).attempts == 1
