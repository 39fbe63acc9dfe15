"""send_email against a real SMTP server (aiosmtpd) started by the test."""

import pytest

from apps.handlers.context import TaskContext
from apps.handlers.registry import get_task_type
from apps.notifications.models import SentEmail
from apps.notifications.services import email_send
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from apps.tasks.transitions import AttemptStart, Sql, transition_one
from tests.handlers.runner import create, deliver, release, result_of
from tests.support.files import make_file
from tests.support.images import make_image

S = TaskStatus
pytestmark = [pytest.mark.django_db]


def test_the_mail_arrives_with_recipients_subject_body_and_attachment_bytes(user, smtp):
    png = make_image("PNG")
    image = make_file(user, "chart.png", png, "image/png")
    notes = make_file(user, "notes.txt", "ünïcode notes\n".encode(), "text/plain")
    task = create(
        user,
        "send_email",
        {
            "to": ["ann@example.com", "bob@example.com"],
            "subject": "Weekly report — ready",
            "body": "Hello,\nthe report is attached.\n",
            "attached_files": [str(image.id), "notes.txt"],
        },
    )
    assert deliver(task).status == S.SUCCEEDED, task.error

    [mail] = smtp.messages
    assert mail.rcpt_tos == ["ann@example.com", "bob@example.com"]
    assert mail.mail_from == "tasks@taskflow.test"
    message = mail.message
    assert message["Subject"] == "Weekly report — ready"
    assert message["To"] == "ann@example.com, bob@example.com"
    assert message["Message-ID"] == f"<task-{task.id}@taskflow.test>"
    assert mail.text_body() == "Hello,\nthe report is attached.\n"
    assert mail.attachments() == {"chart.png": png, "notes.txt": "ünïcode notes\n".encode()}

    assert result_of(task)["message_id"] == message["Message-ID"]
    assert result_of(task)["to"] == ["ann@example.com", "bob@example.com"]
    assert result_of(task)["already_sent"] is False
    assert [f["id"] for f in result_of(task)["attached_files"]] == [str(image.id), str(notes.id)]
    assert SentEmail.objects.filter(task=task, attempt=1).exists()


def test_one_address_as_a_string_and_an_attachment_only_mail(user, smtp):
    file = make_file(user, "only.bin", b"\x00\x01\x02", "application/octet-stream")
    task = create(user, "send_email", {"to": "solo@example.com", "attached_files": [str(file.id)]})
    assert task.payload["to"] == ["solo@example.com"]
    assert deliver(task).status == S.SUCCEEDED, task.error
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["solo@example.com"]
    assert mail.attachments() == {"only.bin": b"\x00\x01\x02"}


def test_a_refused_recipient_fails_at_once_with_the_servers_reply(user, smtp):
    smtp.refuse["nobody@example.com"] = "550 5.1.1 <nobody@example.com>: Recipient unknown"
    task = create(user, "send_email", {"to": "nobody@example.com", "subject": "hi"}, max_retries=5)
    outcome = deliver(task)
    assert outcome.status == S.FAILED
    assert task.attempts == 1
    assert "550 5.1.1 <nobody@example.com>: Recipient unknown" in task.error
    assert smtp.messages == []
    assert not SentEmail.objects.filter(task=task).exists()


def test_a_recipient_refused_among_others_is_reported_and_the_rest_get_it(user, smtp):
    smtp.refuse["gone@example.com"] = "550 5.1.1 mailbox gone"
    task = create(user, "send_email", {"to": ["here@example.com", "gone@example.com"], "body": "x"})
    assert deliver(task).status == S.SUCCEEDED, task.error
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["here@example.com"]
    assert result_of(task)["refused"] == {"gone@example.com": [550, "5.1.1 mailbox gone"]}


def test_a_temporary_refusal_retries_then_sends(user, smtp):
    smtp.refuse["busy@example.com"] = "451 4.3.0 Mailbox busy, try again later"
    task = create(user, "send_email", {"to": "busy@example.com", "subject": "s"}, max_retries=2)
    assert deliver(task).status == S.RETRYING
    assert "451 4.3.0 Mailbox busy" in task.error
    assert smtp.messages == []

    del smtp.refuse["busy@example.com"]
    release(task)
    assert deliver(task).status == S.SUCCEEDED, task.error
    assert len(smtp.messages) == 1
    assert task.attempts == 2


def test_a_server_that_is_down_then_back_gets_the_mail_once(user, smtp):
    smtp.stop()
    task = create(user, "send_email", {"to": "ops@example.com", "subject": "s"}, max_retries=3)
    assert deliver(task).status == S.RETRYING
    assert "Could not reach the SMTP server" in task.error

    smtp.start()  # the same port
    release(task)
    assert deliver(task).status == S.SUCCEEDED, task.error
    assert [m.rcpt_tos for m in smtp.messages] == [["ops@example.com"]]


def test_out_of_retries_while_the_server_is_down_fails(user, smtp):
    smtp.stop()
    task = create(user, "send_email", {"to": "ops@example.com", "subject": "s"}, max_retries=0)
    assert deliver(task).status == S.FAILED
    assert "Could not reach the SMTP server" in task.error


def _claim(task: Task) -> Task:
    moved = transition_one(
        task_id=task.id,
        to=S.RUNNING,
        allowed_from={S.QUEUED},
        changes={"attempts": Sql("t.attempts + 1")},
        attempt=AttemptStart(worker="doomed-worker"),
        note="claimed by doomed-worker",
    )
    assert moved is not None
    return moved.task


def test_a_redelivered_message_after_the_mail_went_out_does_not_send_it_again(user, smtp):
    task = create(user, "send_email", {"to": "once@example.com", "subject": "only once"})
    # A worker claims the task and its handler sends the mail; then the worker dies before it
    # records the end of the attempt.
    claimed = _claim(task)
    spec = get_task_type("send_email")
    assert spec is not None
    ctx = TaskContext(
        task_id=str(task.id),
        task_type="send_email",
        attempt=claimed.attempts,
        owner_id=user.id,
        report_progress=lambda percent, message: None,
        read_cancel_requested=lambda: False,
    )
    spec.run(ctx, dict(claimed.payload))
    assert len(smtp.messages) == 1

    # RabbitMQ hands the unacknowledged message to another worker: the attempt counts as lost...
    assert deliver(task, redelivered=True).action == "lost"
    assert task.status == S.RETRYING
    # ...and the retry finds the mail already sent.
    release(task)
    assert deliver(task).status == S.SUCCEEDED, task.error
    assert len(smtp.messages) == 1
    assert result_of(task)["already_sent"] is True
    assert result_of(task)["message_id"] == f"<task-{task.id}@taskflow.test>"


def test_the_service_sends_a_tasks_mail_once(user, smtp):
    task = create(user, "send_email", {"to": "svc@example.com", "subject": "s"})
    first = email_send(task_id=task.id, attempt=1, to=["svc@example.com"], subject="s", body="")
    again = email_send(task_id=task.id, attempt=2, to=["svc@example.com"], subject="s", body="")
    assert (first["already_sent"], again["already_sent"]) == (False, True)
    assert first["message_id"] == again["message_id"]
    assert len(smtp.messages) == 1


def test_an_attachment_deleted_after_creation_fails_the_task_clearly(user, smtp):
    file = make_file(user, "temp.txt")
    task = create(user, "send_email", {"to": "a@example.com", "attached_files": [str(file.id)]})
    file.delete()
    assert deliver(task).status == S.FAILED
    assert "No such file" in task.error
    assert smtp.messages == []
