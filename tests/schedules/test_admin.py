"""The schedules admin through Django's test client: the list, and the enable/disable actions."""

from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apps.accounts.models import User
from apps.schedules.models import Schedule
from tests.schedules.conftest import make_schedule

CHANGELIST = reverse("admin:schedules_schedule_changelist")


@pytest.fixture
def admin(db: Any) -> Client:
    client = Client()
    client.force_login(
        User.objects.create_superuser(email="staff@example.com", password="staff-password-1")
    )
    return client


def test_the_list_shows_each_schedules_owner_timing_and_last_error(admin, user, other_user):
    make_schedule(user, name="hourly", every_seconds=3600)
    failing = make_schedule(
        other_user,
        name="weekday mornings",
        cron="0 9 * * 1-5",
        every_seconds=None,
        timezone="Europe/Paris",
    )
    Schedule.objects.filter(id=failing.id).update(
        last_run_at=timezone.now(), last_error="too_many_active_tasks: You have too many"
    )

    response = admin.get(CHANGELIST)

    assert response.status_code == 200, response.content[:2000]
    assert {s.name for s in response.context["cl"].result_list} == {"hourly", "weekday mornings"}
    page = response.content.decode()
    for text in (
        "alice@example.com",
        "bob@example.com",
        "every 3600 s",
        "0 9 * * 1-5 (Europe/Paris)",
        "too_many_active_tasks: You have too many",
    ):
        assert text in page, text
    assert (
        admin.get(reverse("admin:schedules_schedule_change", args=[failing.id])).status_code == 200
    )


def test_the_list_reads_a_fixed_number_of_queries(admin, user, django_assert_max_num_queries):
    for n in range(30):
        make_schedule(user, name=f"s{n}")
    admin.get(CHANGELIST)  # warm: the session and the user
    with django_assert_max_num_queries(12):
        assert admin.get(CHANGELIST).status_code == 200


def test_disable_and_enable_actions(admin, user):
    schedule = make_schedule(user, every_seconds=600)
    data = {"_selected_action": [str(schedule.id)], "index": 0}

    response = admin.post(CHANGELIST, {**data, "action": "disable"}, follow=True)
    assert response.status_code == 200
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_run_at) == (False, None)

    before = timezone.now()
    admin.post(CHANGELIST, {**data, "action": "enable"}, follow=True)
    schedule.refresh_from_db()
    assert schedule.enabled
    assert schedule.next_run_at is not None and schedule.next_run_at >= before


def test_the_actions_work_on_a_schedule_below_a_raised_minimum_interval(admin, user, settings):
    schedule = make_schedule(user, every_seconds=60)
    settings.TASKFLOW = {**settings.TASKFLOW, "SCHEDULE_MIN_INTERVAL_SECONDS": 300}
    data = {"_selected_action": [str(schedule.id)], "index": 0}

    response = admin.post(CHANGELIST, {**data, "action": "disable"}, follow=True)
    assert response.status_code == 200
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_run_at) == (False, None)

    admin.post(CHANGELIST, {**data, "action": "enable"}, follow=True)
    schedule.refresh_from_db()
    assert schedule.enabled and schedule.next_run_at is not None


def test_enabling_a_schedule_whose_time_cannot_be_computed_is_a_message_not_a_500(admin, user):
    # e.g. a zone the tz database no longer has: the firing disabled it (_record_failure).
    schedule = make_schedule(user, cron="0 3 * * *", every_seconds=None, enabled=False)
    Schedule.objects.filter(id=schedule.id).update(timezone="Gone/Away")
    data = {"_selected_action": [str(schedule.id)], "index": 0}

    response = admin.post(CHANGELIST, {**data, "action": "enable"}, follow=True)

    assert response.status_code == 200
    assert "Gone/Away" in response.content.decode()
    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_run_at) == (False, None)
