"""One user never reaches another's tasks or files: a 404 exactly like a missing object's, on every
route that takes a task or file id (read from the URL resolver, so new routes are covered), for
every method, and through file ids placed in task payloads."""

import json
import uuid
from typing import Any

import pytest
from rest_framework.permissions import IsAdminUser
from rest_framework.test import APIClient

from apps.accounts.models import User
from apps.files.models import UserFile
from apps.tasks import services
from apps.tasks.execution import handle_delivery
from apps.tasks.models import Task
from apps.tasks.states import TaskStatus
from tests.security.support import Route, api_routes, assert_error
from tests.support.files import make_file
from tests.tasks.factories import create_task

S = TaskStatus
SECRET = "s3cret-marker-of-alice"
OBJECT_ROUTES = [r for r in api_routes() if {"task_id", "file_id"} & set(r.params)]
BODIES: dict[str, Any] = {
    "patch": {"payload": {"message": "taken over"}, "max_retries": 0},
    "post": {},
}


@pytest.fixture
def alices(user: User) -> dict[str, Any]:
    """Alice's objects, in states where every action would succeed for her."""
    queued = create_task(user, payload={"message": SECRET})
    cancelled = create_task(user, payload={"message": SECRET})
    services.task_cancel(task=cancelled, actor=user)
    secret_file = make_file(user, name=f"{SECRET}.txt", content=SECRET.encode())
    return {"tasks": [queued, cancelled], "file": secret_file}


def request(client: APIClient, method: str, path: str) -> Any:
    if method in BODIES:
        return getattr(client, method)(path, BODIES[method], format="json")
    return getattr(client, method)(path)


def targets(route: Route, alices: dict[str, Any]) -> list[dict[str, str]]:
    if "task_id" in route.params:
        return [{"task_id": str(task.id)} for task in alices["tasks"]]
    return [{"file_id": str(alices["file"].id)}]


def test_the_routes_with_ids_are_all_found():
    names = {route.name for route in OBJECT_ROUTES}
    assert {"task-detail", "task-result", "task-cancel", "task-retry"} <= names
    assert {"file-detail", "file-download"} <= names


@pytest.mark.parametrize("route", OBJECT_ROUTES, ids=str)
def test_another_users_object_is_a_404_like_a_missing_one(route, user, other_api, alices):
    staff_only = any(issubclass(cls, IsAdminUser) for cls in route.view.permission_classes)
    for method in route.methods:
        for ids in targets(route, alices):
            response = request(other_api, method, route.path(**ids))
            missing = request(
                other_api, method, route.path(**dict.fromkeys(ids, str(uuid.uuid4())))
            )
            if staff_only:
                assert_error(response, 403, "permission_denied")
            else:
                code = "task_not_found" if "task_id" in ids else "file_not_found"
                assert_error(response, 404, code)
            # Nothing tells Bob the object exists: the answer is the missing object's answer.
            assert (response.status_code, response.json()) == (missing.status_code, missing.json())
            for leak in (SECRET, user.email, *ids.values()):
                assert leak not in response.content.decode(), (method, route.name)

    # And nothing happened to Alice's objects.
    queued, cancelled = (Task.objects.get(id=t.id) for t in alices["tasks"])
    assert (queued.status, queued.payload, queued.max_retries) == (S.QUEUED, {"message": SECRET}, 3)
    assert cancelled.status == S.CANCELLED
    assert UserFile.objects.filter(id=alices["file"].id).exists()


def test_lists_filters_and_stats_show_only_ones_own(user, other_user, other_api, alices):
    create_task(other_user, payload={"message": "bob's"})
    tasks = other_api.get("/api/tasks").json()["results"]
    assert [t["id"] for t in tasks] == [str(Task.objects.get(owner=other_user).id)]
    assert other_api.get("/api/files").json()["results"] == []
    by_source = other_api.get(f"/api/files?source_task={alices['tasks'][0].id}")
    assert by_source.status_code == 200
    assert by_source.json()["results"] == []
    stats = other_api.get("/api/stats").json()
    assert stats["scope"] == "own"
    assert stats["total"] == 1
    assert SECRET not in json.dumps(stats)


def test_an_idempotency_key_is_per_user(api, other_api):
    """Bob reusing Alice's key gets a task of his own, not hers (nor a conflict that says hers
    exists)."""
    key = {"HTTP_IDEMPOTENCY_KEY": "order-42"}
    alice = api.post("/api/tasks", {"type": "echo", "payload": {"m": SECRET}}, format="json", **key)
    bob = other_api.post("/api/tasks", {"type": "echo", "payload": {}}, format="json", **key)
    assert (alice.status_code, bob.status_code) == (201, 201)
    assert bob.json()["id"] != alice.json()["id"]
    assert SECRET not in bob.content.decode()


# --- File ids inside task payloads -------------------------------------------------------------


def payload_with(type: str, ref: str) -> dict[str, Any]:
    if type == "process_image":
        return {"path": ref, "blur": 1}
    return {"to": "carol@example.com", "subject": "hi", "attached_files": [ref]}


FIELD = {"process_image": "payload.path", "send_email": "payload.attached_files"}


@pytest.mark.parametrize("type", ["process_image", "send_email"])
def test_another_users_file_in_a_payload_is_400_like_a_missing_one(other_api, alices, type):
    theirs = alices["file"]
    refs = {
        "their id": str(theirs.id),
        "a random id": str(uuid.uuid4()),
        "their name": theirs.name,
        "an unknown name": "no-such-name.txt",
    }
    answers = {}
    for label, ref in refs.items():
        response = other_api.post(
            "/api/tasks", {"type": type, "payload": payload_with(type, ref)}, format="json"
        )
        error = assert_error(response, 400, "validation_error", (FIELD[type],))
        answers[label] = json.dumps(error).replace(ref, "<ref>")
        assert SECRET not in response.content.decode().replace(ref, "<ref>")
    # Alice's file by id reads as a random id; by name, as a name no one uses.
    assert answers["their id"] == answers["a random id"]
    assert answers["their name"] == answers["an unknown name"]
    assert not Task.objects.filter(owner__email="bob@example.com").exists()


def test_another_users_file_is_refused_in_bulk_and_on_change(other_user, other_api, alices):
    theirs = str(alices["file"].id)
    response = other_api.post(
        "/api/tasks/bulk",
        {
            "tasks": [
                {"type": "echo"},
                {"type": "process_image", "payload": payload_with("process_image", theirs)},
            ]
        },
        format="json",
    )
    assert_error(response, 400, "validation_error", ("tasks[1].payload.path",))
    assert not Task.objects.filter(owner=other_user).exists()

    own = make_file(other_user, name="mine.png")
    task = create_task(other_user, "process_image", payload_with("process_image", str(own.id)))
    response = other_api.patch(
        f"/api/tasks/{task.id}", {"payload": payload_with("process_image", theirs)}, format="json"
    )
    assert_error(response, 400, "validation_error", ("payload.path",))
    assert Task.objects.get(id=task.id).payload["path"] == str(own.id)


def test_a_worker_checks_the_owner_again_when_the_task_runs(other_user, alices):
    """Defence in depth: a payload that names another user's file (written past the API, say by
    an old row) fails at run time; nothing of Alice's is read or copied to Bob."""
    own = make_file(other_user, name="mine.png")
    task = create_task(other_user, "process_image", payload_with("process_image", str(own.id)))
    Task.objects.filter(id=task.id).update(
        payload=payload_with("process_image", str(alices["file"].id))
    )
    task.refresh_from_db()
    outcome = handle_delivery(
        task_id=str(task.id), dispatch_id=str(task.dispatch_id), redelivered=False, worker="w"
    )
    task.refresh_from_db()
    assert outcome.status == S.FAILED
    assert task.status == S.FAILED
    assert "No such file" in task.error
    assert SECRET not in task.error
    assert list(UserFile.objects.filter(owner=other_user)) == [own]
