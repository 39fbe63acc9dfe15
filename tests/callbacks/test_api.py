"""What the API shows of callbacks: the task's callback state, and each user's own secret."""

from apps.callbacks import services
from apps.callbacks.models import TaskCallback
from apps.tasks.execution import handle_delivery
from tests.tasks.factories import create_task


def test_the_task_detail_shows_its_callback_state(user, api, receiver, settings):
    settings.CALLBACK_MAX_ATTEMPTS = 2
    task = create_task(user, "echo", {}, callback_url=receiver.url("/status/500"))
    assert api.get(f"/api/tasks/{task.id}").json()["callback"] is None
    task.refresh_from_db()
    handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    callback = TaskCallback.objects.get(task=task)

    def shown() -> dict:
        return api.get(f"/api/tasks/{task.id}").json()["callback"]

    assert shown() == {
        "event": "task.succeeded",
        "state": "pending",
        "attempts": 0,
        "last_error": "",
        "last_status_code": None,
        "delivered_at": None,
    }
    services.deliver_callback(callback.id)
    services.deliver_callback(callback.id)
    failed = shown()
    assert (failed["state"], failed["attempts"], failed["last_status_code"]) == ("failed", 2, 500)
    assert failed["last_error"].startswith("answered 500")
    services.callbacks_send_again(ids=[callback.id])  # the admin's action
    assert shown()["state"] == "pending"
    TaskCallback.objects.filter(id=callback.id).update(url=receiver.url("/ok"))
    services.deliver_callback(callback.id)
    delivered = shown()
    assert (delivered["state"], delivered["attempts"]) == ("delivered", 1)
    assert delivered["delivered_at"] is not None


def test_each_user_reads_their_own_secret_only(user, other_user, api, other_api, anon):
    mine = api.get("/api/callbacks/secret")
    theirs = other_api.get("/api/callbacks/secret")
    assert mine.status_code == theirs.status_code == 200
    assert mine["Cache-Control"] == "no-store"
    assert mine.json()["secret"] == services.user_signing_secret(user.id)
    assert theirs.json()["secret"] == services.user_signing_secret(other_user.id)
    assert mine.json()["secret"] != theirs.json()["secret"]
    assert len(mine.json()["secret"]) == 64
    assert anon.get("/api/callbacks/secret").status_code == 401


def test_the_secret_follows_the_signing_key(user, settings):
    settings.CALLBACK_SIGNING_KEY = ""
    derived = services.user_signing_secret(user.id)
    settings.CALLBACK_SIGNING_KEY = "a-key-of-the-operators-own-0123456789"
    assert services.user_signing_secret(user.id) != derived
    settings.SECRET_KEY = "another-secret-key-0123456789-0123456789-abcdef"
    settings.CALLBACK_SIGNING_KEY = ""
    assert services.user_signing_secret(user.id) != derived


def test_the_admin_lists_callbacks_and_sends_one_again(user, client, settings):
    from apps.accounts.models import User

    staff = User.objects.create_superuser(email="staff@example.com", password="staff-password-1")
    client.force_login(staff)
    task = create_task(user, "test_permanent", {}, callback_url="https://hooks.example.com/x")
    task.refresh_from_db()
    handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    callback = TaskCallback.objects.get(task=task)
    TaskCallback.objects.filter(id=callback.id).update(failed_at=callback.created_at, attempts=8)
    page = client.get("/admin/callbacks/taskcallback/?state=failed")
    assert page.status_code == 200
    assert b"hooks.example.com/x" in page.content
    assert (
        b"hooks.example.com/x"
        not in client.get("/admin/callbacks/taskcallback/?state=delivered").content
    )
    response = client.post(
        "/admin/callbacks/taskcallback/",
        {"action": "send_again", "_selected_action": [callback.id]},
    )
    assert response.status_code == 302
    callback.refresh_from_db()
    assert (callback.state, callback.attempts, callback.failed_at) == ("pending", 0, None)


def test_the_callbacks_docs_give_receivers_the_hardened_verification_code():
    """Receivers copy the snippet in docs/api.md "Callbacks": it must be signing.verify, which
    answers False to a malformed header (v1=é, t=²) where the old snippet raised (a 500)."""
    import inspect
    from pathlib import Path

    from apps.handlers import signing

    docs = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    callbacks = docs.split("## Callbacks", 1)[1].split("\n## ", 1)[0]
    assert inspect.getsource(signing.verify) in callbacks
