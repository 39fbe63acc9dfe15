"""The new task types on the Procfile's real workers: process_image on `worker` (prefork, cpu
queue); download_files and send_email on `worker-io` (thread pool, io queue)."""

from pathlib import Path
from typing import Any

import pytest

from apps.files.models import UserFile
from apps.tasks.models import Task, TaskAttempt
from apps.tasks.states import TaskStatus
from tests.handlers.runner import create
from tests.support import processes
from tests.support.files import make_file
from tests.support.http import body_of
from tests.support.images import make_image
from tests.support.wait import wait_for

S = TaskStatus
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]


def finished(task: Task) -> Task:
    wait_for(
        lambda: Task.objects.filter(id=task.id, status__in=[S.SUCCEEDED, S.FAILED]).exists(),
        timeout=60,
        what=f"{task.type} to finish",
    )
    task.refresh_from_db()
    return task


def test_cpu_and_io_types_run_on_their_own_workers(user, broker: Any, web, smtp, media_root: Path):
    env = {
        "MEDIA_ROOT": str(media_root),
        "SSRF_ALLOWED_NETWORKS": "127.0.0.0/8",
        "MAIL_HOST": smtp.host,
        "MAIL_PORT": str(smtp.port),
        "MAIL_FROM": "tasks@taskflow.test",
        "WORKER_CONCURRENCY": "2",
        "IO_WORKER_CONCURRENCY": "8",
    }
    with processes.running("worker", "worker-io", **env) as started:
        image = make_file(user, "photo.jpg", make_image("JPEG"))
        processing = create(user, "process_image", {"path": str(image.id), "grayscale": True})
        downloading = create(
            user, "download_files", {"urls": [web.url("/bytes/3000"), web.url("/bytes/7")]}
        )
        mailing = create(
            user, "send_email", {"to": "e2e@example.com", "attached_files": [str(image.id)]}
        )
        tasks = [finished(t) for t in (processing, downloading, mailing)]
        logs = processes.dump_logs(started)

    for task in tasks:
        assert task.status == S.SUCCEEDED, f"{task.type}: {task.error}\n{logs}"
    assert (processing.queue, downloading.queue, mailing.queue) == ("cpu", "io", "io")
    workers = {
        t.type: TaskAttempt.objects.get(task=t, number=1).worker.split("@")[0] for t in tasks
    }
    assert workers == {
        "process_image": "worker",
        "download_files": "worker-io",
        "send_email": "worker-io",
    }

    output = UserFile.objects.get(source_task=processing)
    assert (media_root / output.storage_key).is_file()
    downloaded = UserFile.objects.filter(source_task=downloading).order_by("source_key")
    assert [(media_root / f.storage_key).read_bytes() for f in downloaded] == [
        body_of(3000),
        body_of(7),
    ]
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["e2e@example.com"]
    assert list(mail.attachments()) == ["photo.jpg"]
