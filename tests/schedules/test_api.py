"""The schedules API through DRF's test client: create, list, read, change, delete, run now."""

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from apps.schedules.models import Schedule
from apps.tasks.models import Task
from tests.schedules.conftest import make_schedule
from tests.security.support import assert_error

pytestmark = pytest.mark.django_db


def create(api: Any, **body: Any) -> Any:
    values = {"name": "nightly", "type": "echo", "payload": {"n": 1}, "cron": "0 3 * * *"}
    values.update(body)
    return api.post(
        "/api/schedules", {k: v for k, v in values.items() if v is not ...}, format="json"
    )


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_create_a_cron_schedule_answers_it_with_its_next_run(api, user):
    response = create(api, cron="0 9 * * 1-5", timezone="Europe/Paris")

    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"] == f"/api/schedules/{body['id']}"
    assert body["name"] == "nightly"
    assert (body["type"], body["payload"]) == ("echo", {"n": 1})
    assert (body["cron"], body["every_seconds"], body["timezone"]) == (
        "0 9 * * 1-5",
        None,
        "Europe/Paris",
    )
    assert body["enabled"] is True
    assert (body["last_run_at"], body["last_task_id"], body["last_error"]) == (None, None, "")
    next_run = parse(body["next_run_at"])
    assert timezone.now() < next_run <= timezone.now() + timedelta(days=4)
    local = next_run.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    assert (local.hour, local.minute, local.weekday() < 5) == (9, 0, True)
    assert Schedule.objects.get(id=body["id"]).owner == user
    assert not Task.objects.exists()  # nothing runs before its time


def test_create_an_interval_schedule_first_runs_one_interval_later(api):
    before = timezone.now()
    response = create(api, cron=..., every_seconds=90)

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["cron"], body["every_seconds"], body["timezone"]) == (None, 90, "UTC")
    next_run = parse(body["next_run_at"])
    assert before + timedelta(seconds=90) <= next_run <= timezone.now() + timedelta(seconds=90)


def test_a_disabled_schedule_has_no_next_run(api):
    response = create(api, enabled=False)
    assert response.status_code == 201, response.content
    assert response.json()["next_run_at"] is None


@pytest.mark.parametrize(
    ("body", "fields"),
    [
        ({"cron": "0 3 * *"}, ("cron",)),
        ({"cron": "0 25 * * *"}, ("cron",)),
        ({"cron": "0 0 30 2 *"}, ("cron",)),
        ({"cron": 5}, ("cron",)),
        ({"timezone": "Europe/Atlantis"}, ("timezone",)),
        ({"timezone": ""}, ("timezone",)),
        ({"every_seconds": 60}, ("cron", "every_seconds")),  # both
        ({"cron": ...}, ("cron", "every_seconds")),  # neither
        ({"cron": None}, ("cron", "every_seconds")),
        ({"cron": ..., "every_seconds": 30}, ("every_seconds",)),  # below the minimum
        ({"cron": ..., "every_seconds": "often"}, ("every_seconds",)),
        ({"name": ""}, ("name",)),
        ({"name": ...}, ("name",)),
        ({"type": ...}, ("type",)),
        ({"payload": [1]}, ("payload",)),
        ({"enabled": "maybe"}, ("enabled",)),
        ({"bogus": 1, "run_at": "2030-01-01T00:00:00Z"}, ("bogus", "run_at")),  # unknown
    ],
)
def test_invalid_input_is_a_400_on_the_field(api, settings, body, fields):
    settings.TASKFLOW = {**settings.TASKFLOW, "SCHEDULE_MIN_INTERVAL_SECONDS": 60}
    error = assert_error(create(api, **body), 400, "validation_error", fields=fields)
    if "bogus" in fields:
        assert "Unknown field" in error["fields"]["bogus"][0]
    assert not Schedule.objects.exists()


def test_a_payload_invalid_for_the_type_is_the_task_creates_400(api):
    body = {"type": "long_computation", "payload": {"duration": 9999}}
    task_error = assert_error(
        api.post("/api/tasks", body, format="json"), 400, "validation_error", ("payload.duration",)
    )
    error = assert_error(create(api, **body), 400, "validation_error", ("payload.duration",))
    assert error["fields"] == task_error["fields"]
    assert not Schedule.objects.exists()


def test_an_unknown_or_disabled_type_is_the_task_creates_400(api):
    assert_error(create(api, type="nope"), 400, "unknown_task_type", ("type",))
    from apps.handlers.models import TaskType

    TaskType.objects.update_or_create(name="echo", defaults={"enabled": False})
    assert_error(create(api, type="echo"), 400, "task_type_disabled", ("type",))


def test_a_name_is_unique_per_owner(api, other_api):
    assert create(api).status_code == 201
    assert_error(create(api), 400, "schedule_name_taken", ("name",))
    assert create(other_api).status_code == 201  # another user's names are theirs
    assert Schedule.objects.count() == 2


def test_the_schedule_cap_is_a_429(api, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_SCHEDULES_PER_USER": 2}
    assert create(api, name="a").status_code == 201
    assert create(api, name="b").status_code == 201
    error = assert_error(create(api, name="c"), 429, "too_many_schedules")
    assert error["limit"] == 2
    assert Schedule.objects.count() == 2


def test_list_is_the_owners_newest_first_and_paginated(api, user, other_user):
    mine = [make_schedule(user, name=f"s{n}") for n in range(3)]
    make_schedule(other_user, name="theirs")

    first = api.get("/api/schedules?page_size=2")
    assert first.status_code == 200, first.content
    page = first.json()
    assert [s["name"] for s in page["results"]] == ["s2", "s1"]
    assert page["previous"] is None and page["next"]
    second = api.get(page["next"]).json()
    assert [s["id"] for s in second["results"]] == [str(mine[0].id)]
    assert second["next"] is None
    assert_error(api.get("/api/schedules?page_size=0"), 400, "validation_error", ("page_size",))


def test_list_reads_a_fixed_number_of_queries(api, user, django_assert_max_num_queries):
    for n in range(20):
        make_schedule(user, name=f"s{n}")
    with django_assert_max_num_queries(3):  # the user (cached or not), the page
        assert len(api.get("/api/schedules").json()["results"]) == 20


def test_another_users_schedule_is_404_everywhere(api, other_user):
    theirs = make_schedule(other_user)
    missing = uuid.uuid4()
    for schedule_id in (theirs.id, missing):
        url = f"/api/schedules/{schedule_id}"
        assert_error(api.get(url), 404, "schedule_not_found")
        assert_error(api.patch(url, {"enabled": False}, format="json"), 404, "schedule_not_found")
        assert_error(api.delete(url), 404, "schedule_not_found")
        assert_error(api.post(f"{url}/run"), 404, "schedule_not_found")
    theirs.refresh_from_db()
    assert theirs.enabled
    assert not Task.objects.exists()


def test_get_answers_the_schedule(api, user):
    schedule = make_schedule(user)
    body = api.get(f"/api/schedules/{schedule.id}/").json()
    assert body["id"] == str(schedule.id)
    assert body["every_seconds"] == 60


def test_patch_of_the_timing_recomputes_next_run(api, user):
    schedule = make_schedule(user, every_seconds=3600)
    url = f"/api/schedules/{schedule.id}"

    response = api.patch(url, {"cron": "*/5 * * * *"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["cron"], body["every_seconds"]) == ("*/5 * * * *", None)  # switched
    next_run = parse(body["next_run_at"])
    assert timezone.now() < next_run <= timezone.now() + timedelta(minutes=5)
    assert next_run.minute % 5 == 0 and next_run.second == 0

    body = api.patch(url, {"every_seconds": 120}, format="json").json()
    assert (body["cron"], body["every_seconds"]) == (None, 120)
    assert parse(body["next_run_at"]) <= timezone.now() + timedelta(seconds=120)

    body = api.patch(url, {"cron": "0 9 * * *", "timezone": "Asia/Tokyo"}, format="json").json()
    assert parse(body["next_run_at"]).astimezone(UTC).hour == 0  # 09:00 in Tokyo (+9)


def test_patch_disable_then_enable_computes_next_run_from_now(api, user):
    schedule = make_schedule(user, every_seconds=60)
    url = f"/api/schedules/{schedule.id}"
    assert api.patch(url, {"enabled": False}, format="json").json()["next_run_at"] is None
    Schedule.objects.filter(id=schedule.id).update(next_run_at=None)

    before = timezone.now()
    body = api.patch(url, {"enabled": True}, format="json").json()
    assert body["enabled"] is True
    assert parse(body["next_run_at"]) >= before + timedelta(seconds=60)


def test_patch_of_name_or_payload_leaves_next_run(api, user):
    schedule = make_schedule(user)
    body = api.patch(
        f"/api/schedules/{schedule.id}", {"name": "renamed", "payload": {"n": 2}}, format="json"
    ).json()
    assert (body["name"], body["payload"]) == ("renamed", {"n": 2})
    assert parse(body["next_run_at"]) == schedule.next_run_at


@pytest.mark.parametrize(
    ("body", "code", "fields"),
    [
        ({}, "validation_error", ("non_field_errors",)),
        ({"cron": "nope"}, "validation_error", ("cron",)),
        ({"cron": "0 9 * * *", "every_seconds": 60}, "validation_error", ("cron", "every_seconds")),
        ({"every_seconds": None}, "validation_error", ("cron", "every_seconds")),
        ({"timezone": "Nowhere/Land"}, "validation_error", ("timezone",)),
        ({"type": "long_computation"}, "validation_error", ("payload.duration",)),
        ({"next_run_at": "2030-01-01T00:00:00Z"}, "validation_error", ("next_run_at",)),
    ],
)
def test_patch_with_invalid_input_is_400_and_changes_nothing(api, user, body, code, fields):
    schedule = make_schedule(user)
    response = api.patch(f"/api/schedules/{schedule.id}", body, format="json")
    assert_error(response, 400, code, fields)
    stored = Schedule.objects.get(id=schedule.id)
    assert (stored.type, stored.every_seconds, stored.cron, stored.next_run_at) == (
        "echo",
        60,
        "",
        schedule.next_run_at,
    )


def test_patch_to_a_taken_name_is_400(api, user):
    make_schedule(user, name="a")
    b = make_schedule(user, name="b")
    response = api.patch(f"/api/schedules/{b.id}", {"name": "a"}, format="json")
    assert_error(response, 400, "schedule_name_taken", ("name",))


def test_delete_removes_the_schedule_and_keeps_its_tasks(api, user):
    schedule = make_schedule(user)
    task = api.post(f"/api/schedules/{schedule.id}/run").json()
    assert api.delete(f"/api/schedules/{schedule.id}").status_code == 204
    assert not Schedule.objects.exists()
    assert Task.objects.filter(id=task["id"]).exists()


def test_run_now_retried_with_an_idempotency_key_creates_one_task(api, user):
    schedule = make_schedule(user, type="echo", payload={"k": "v"})
    url = f"/api/schedules/{schedule.id}/run"
    first = api.post(url, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-25")
    again = api.post(url, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-25")

    assert first.status_code == 201, first.content
    assert again.status_code == 200, again.content
    assert again["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert Task.objects.filter(owner=user).count() == 1
    other = api.post(url, HTTP_IDEMPOTENCY_KEY="nightly-2026-11-26")
    assert other.status_code == 201
    assert_error(api.post(url, HTTP_IDEMPOTENCY_KEY="x" * 201), 400, "validation_error")


def test_run_now_creates_a_task_and_leaves_next_run(api, user):
    schedule = make_schedule(user, type="echo", payload={"k": "v"}, enabled=False)
    response = api.post(f"/api/schedules/{schedule.id}/run")

    assert response.status_code == 201, response.content
    body = response.json()
    assert response["Location"] == f"/api/tasks/{body['id']}"
    task = Task.objects.get(id=body["id"])
    assert (task.owner, task.type, task.payload, task.status) == (
        user,
        "echo",
        {"k": "v"},
        "queued",
    )
    stored = Schedule.objects.get(id=schedule.id)
    assert stored.next_run_at is None  # still disabled, nothing moved
    assert (stored.last_task_id, stored.last_error) == (task.id, "")
    assert stored.last_run_at is not None


def test_run_now_answers_the_creates_refusal(api, user, settings):
    schedule = make_schedule(user)
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_ACTIVE_TASKS_PER_USER": 1}
    assert api.post(f"/api/schedules/{schedule.id}/run").status_code == 201
    assert_error(api.post(f"/api/schedules/{schedule.id}/run"), 429, "too_many_active_tasks")
    assert Task.objects.count() == 1


def test_schedules_need_a_login(anon, user):
    schedule = make_schedule(user)
    assert_error(anon.get("/api/schedules"), 401, "not_authenticated")
    assert_error(anon.post(f"/api/schedules/{schedule.id}/run"), 401, "not_authenticated")


def test_a_schedule_whose_interval_is_below_a_raised_minimum_can_still_be_disabled(
    api, user, settings
):
    # The operator raised SCHEDULE_MIN_INTERVAL_SECONDS after the schedule was made: turning it
    # off (or on again) asks nothing of its timing, and was refused with a 400 on every_seconds.
    schedule = make_schedule(user, every_seconds=60)
    settings.TASKFLOW = {**settings.TASKFLOW, "SCHEDULE_MIN_INTERVAL_SECONDS": 300}
    url = f"/api/schedules/{schedule.id}"

    response = api.patch(url, {"enabled": False}, format="json")
    assert response.status_code == 200, response.content
    assert (response.json()["enabled"], response.json()["next_run_at"]) == (False, None)

    response = api.patch(url, {"enabled": True}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["next_run_at"] is not None
    # A new interval still meets the minimum.
    assert_error(api.patch(url, {"every_seconds": 60}, format="json"), 400, "validation_error")
