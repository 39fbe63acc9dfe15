"""beat's firing of due schedules (services.fire_due_schedules), against the real database."""

from datetime import datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from apps.accounts.models import User
from apps.handlers.models import TaskType
from apps.schedules import services
from apps.schedules.models import Schedule
from apps.schedules.tasks import (
    FIRE_DUE_SCHEDULE_NAME,
    FIRE_DUE_TASK_NAME,
    ensure_fire_due_schedule_on_beat_start,
    fire_due,
)
from apps.tasks.models import Task
from apps.tasks.tasks import release_due
from tests.schedules.conftest import make_schedule
from tests.support.concurrency import at_once


def at(value: datetime | None) -> datetime:
    """A next_run_at or a last_run_at that must be set."""
    assert value is not None
    return value


def make_due(schedule: Schedule, ago: timedelta = timedelta(seconds=1)) -> Schedule:
    due = timezone.now() - ago
    Schedule.objects.filter(id=schedule.id).update(next_run_at=due)
    schedule.refresh_from_db()
    return schedule


@pytest.mark.django_db
def test_a_due_schedule_creates_one_task_for_its_owner_and_moves_on(user):
    schedule = make_due(make_schedule(user, type="echo", payload={"a": 1}, every_seconds=60))
    due = schedule.next_run_at
    before = timezone.now()

    assert services.fire_due_schedules() == 1

    task = Task.objects.get()
    assert (task.owner, task.type, task.payload, task.status) == (user, "echo", {"a": 1}, "queued")
    assert task.idempotency_key == services.firing_key(schedule.id, at(due))
    schedule.refresh_from_db()
    assert at(schedule.next_run_at) > timezone.now()
    assert at(schedule.next_run_at) == at(due) + timedelta(seconds=60)  # on the interval's grid
    assert (schedule.last_task_id, schedule.last_error) == (task.id, "")
    assert at(schedule.last_run_at) >= before
    assert services.fire_due_schedules() == 0  # not due any more
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_a_cron_schedule_fires_and_moves_to_its_next_time_after_now(user):
    schedule = make_due(make_schedule(user, every_seconds=None, cron="*/5 * * * *"))
    assert services.fire_due_schedules() == 1
    schedule.refresh_from_db()
    now = timezone.now()
    assert now < at(schedule.next_run_at) <= now + timedelta(minutes=5)
    assert at(schedule.next_run_at).minute % 5 == 0


@pytest.mark.django_db
def test_runs_missed_while_beat_was_down_are_coalesced_into_one(user):
    schedule = make_due(make_schedule(user, every_seconds=60), ago=timedelta(minutes=30, seconds=5))
    assert services.fire_due_schedules() == 1
    assert services.fire_due_schedules() == 0
    assert Task.objects.count() == 1
    schedule.refresh_from_db()
    assert timezone.now() < at(schedule.next_run_at) <= timezone.now() + timedelta(seconds=60)


@pytest.mark.django_db
def test_firing_again_for_the_same_due_time_creates_no_second_task(user):
    """As if the firing's process died after the create but before the schedule moved on (or a
    second beat fired it): the idempotency key finds the first task."""
    schedule = make_due(make_schedule(user))
    due = schedule.next_run_at
    assert services.fire_due_schedules() == 1
    first = Task.objects.get()

    Schedule.objects.filter(id=schedule.id).update(next_run_at=due)  # back to before the firing
    assert services.fire_due_schedules() == 0

    assert list(Task.objects.all()) == [first]
    schedule.refresh_from_db()
    assert (schedule.last_task_id, schedule.last_error) == (first.id, "")
    assert at(schedule.next_run_at) > timezone.now()


@pytest.mark.django_db
def test_an_owner_at_the_active_task_cap_gets_last_error_and_the_schedule_moves_on(
    user, settings: Any
):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_ACTIVE_TASKS_PER_USER": 1}
    services.schedule_run_now(schedule=make_schedule(user, name="filler"))  # one active task
    schedule = make_due(make_schedule(user))

    assert services.fire_due_schedules() == 0

    assert Task.objects.count() == 1
    schedule.refresh_from_db()
    assert schedule.last_error.startswith("too_many_active_tasks:"), schedule.last_error
    assert schedule.last_task_id is None
    assert at(schedule.next_run_at) > timezone.now()
    assert services.fire_due_schedules() == 0  # no hot loop: not due again until its time


@pytest.mark.django_db
def test_a_disabled_or_removed_type_or_a_payload_gone_bad_is_recorded(user):
    make_due(make_schedule(user, name="disabled", type="long_computation", payload={"duration": 1}))
    gone = make_due(make_schedule(user, name="gone"))
    bad = make_due(
        make_schedule(user, name="bad", type="long_computation", payload={"duration": 1})
    )
    make_due(make_schedule(user, name="fine"))
    Schedule.objects.filter(id=gone.id).update(type="no_such_type")
    Schedule.objects.filter(id=bad.id).update(payload={"duration": -1})
    TaskType.objects.update_or_create(name="long_computation", defaults={"enabled": False})

    assert services.fire_due_schedules() == 1  # the others held nothing back

    errors = dict(Schedule.objects.values_list("name", "last_error"))
    assert errors["disabled"].startswith("task_type_disabled:"), errors
    assert errors["gone"].startswith("unknown_task_type:"), errors
    assert errors["fine"] == ""
    TaskType.objects.update_or_create(name="long_computation", defaults={"enabled": True})
    # (bad was refused for the disabled type first; with the type back, for its payload)
    Schedule.objects.filter(id=bad.id).update(next_run_at=timezone.now())
    services.fire_due_schedules()
    assert Schedule.objects.get(id=bad.id).last_error.startswith("validation_error:")
    assert Task.objects.get().type == "echo"
    assert all(at(s.next_run_at) > timezone.now() for s in Schedule.objects.all())


@pytest.mark.django_db
def test_a_disabled_schedule_does_not_fire(user):
    schedule = make_due(make_schedule(user))
    Schedule.objects.filter(id=schedule.id).update(enabled=False)
    assert services.fire_due_schedules() == 0
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_a_schedule_not_yet_due_does_not_fire(user):
    make_schedule(user)
    assert services.fire_due_schedules() == 0
    assert not Task.objects.exists()


@pytest.mark.django_db
def test_an_unexpected_error_is_recorded_and_holds_back_no_other_schedule(user, monkeypatch):
    broken = make_due(make_schedule(user, name="broken"), ago=timedelta(seconds=5))
    fine = make_due(make_schedule(user, name="fine"))
    real_create = services.task_create

    def create(**kwargs: Any) -> Any:
        if kwargs["payload"] == {"boom": True}:
            raise RuntimeError("a bug")
        return real_create(**kwargs)

    Schedule.objects.filter(id=broken.id).update(payload={"boom": True})
    monkeypatch.setattr(services, "task_create", create)

    assert services.fire_due_schedules() == 1

    broken.refresh_from_db()
    assert "RuntimeError: a bug" in broken.last_error
    assert at(broken.next_run_at) > timezone.now()
    assert Task.objects.get().payload == fine.payload


@pytest.mark.django_db
def test_an_unexpected_error_of_the_timing_itself_holds_back_no_other_schedule(user, monkeypatch):
    # The next time fails to compute with something other than a 400 (a croniter bug, a date
    # out of range): the schedule is switched off with the reason. It was raised out of the
    # whole run, on every heartbeat, so that every schedule due after it never fired.
    broken = make_due(
        make_schedule(user, name="broken", cron="0 3 * * *", every_seconds=None),
        ago=timedelta(seconds=5),
    )
    make_due(make_schedule(user, name="fine"))
    real_next_time = services.next_time

    def next_time(**kwargs: Any) -> Any:
        if kwargs["cron"]:
            raise OverflowError("date value out of range")
        return real_next_time(**kwargs)

    monkeypatch.setattr(services, "next_time", next_time)

    assert services.fire_due_schedules() == 1

    broken.refresh_from_db()
    assert (broken.enabled, broken.next_run_at) == (False, None)
    assert "OverflowError: date value out of range" in broken.last_error
    assert Task.objects.get().payload == {"hello": "world"}  # the fine one's, once


@pytest.mark.django_db
def test_many_due_schedules_fire_over_several_batches(user):
    for n in range(7):
        make_due(make_schedule(user, name=f"s{n}"))
    assert services.fire_due_schedules(batch_size=3) == 7
    assert Task.objects.count() == 7


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_firings_create_one_task(user, broker):
    schedule = make_due(make_schedule(user))

    counts = at_once(services.fire_due_schedules, 2)

    assert sorted(counts) == [0, 1]
    task = Task.objects.get()
    schedule.refresh_from_db()
    assert schedule.last_task_id == task.id
    assert broker.depth("default") == 1  # published once, after its commit


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_firings_of_the_same_due_time_create_one_task(user, broker):
    """Past the row lock too: two firers each holding the schedule as due (a firing that lost
    its lock's race, a crash's rerun) meet at the task's idempotency key."""
    schedule = make_due(make_schedule(user))

    results = at_once(lambda: services._fire(Schedule.objects.select_related("owner").get()), 2)

    assert sorted(results) == [0, 1]
    assert Task.objects.count() == 1
    assert Schedule.objects.get(id=schedule.id).last_task_id == Task.objects.get().id


@pytest.mark.django_db
def test_beats_own_heartbeat_fires_due_schedules_and_the_releasers_does_not(user, broker):
    make_due(make_schedule(user))
    assert "scheduled" not in release_due()  # a burst of schedules never delays releases
    assert Task.objects.count() == 0
    assert fire_due() == 1
    assert Task.objects.count() == 1


@pytest.mark.django_db
def test_beat_start_sets_the_firing_heartbeat_to_the_release_interval(settings):
    from django_celery_beat.models import PeriodicTask

    settings.TASKFLOW = {**settings.TASKFLOW, "RELEASE_INTERVAL_MS": 250}
    ensure_fire_due_schedule_on_beat_start(sender=None)
    row = PeriodicTask.objects.get(name=FIRE_DUE_SCHEDULE_NAME)
    assert (row.task, row.queue, row.enabled) == (FIRE_DUE_TASK_NAME, "maintenance", True)
    assert (row.interval.every, row.interval.period) == (250_000, "microseconds")


@pytest.mark.django_db
def test_the_due_scan_reads_the_partial_index(user):
    make_schedule(user)
    query = (
        Schedule.objects.filter(enabled=True, next_run_at__lte=timezone.now())
        .order_by("next_run_at")
        .values_list("id", flat=True)[:100]
    )
    sql, params = query.query.sql_with_params()
    with connection.cursor() as cursor:
        # A tiny test table is read sequentially anyway: ask which index the planner can use.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}", params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "schedule_due" in plan, plan


@pytest.mark.django_db
def test_a_deactivated_owners_schedule_creates_nothing_and_says_why(user):
    schedule = make_due(make_schedule(user))
    User.objects.filter(id=user.id).update(is_active=False)

    assert services.fire_due_schedules() == 0

    assert not Task.objects.exists()
    schedule.refresh_from_db()
    assert schedule.last_error == "The owner's account is deactivated."
    assert at(schedule.next_run_at) > timezone.now()


@pytest.mark.django_db
def test_a_run_stops_firing_when_its_time_is_up_and_the_next_goes_on(user, broker):
    for number in range(3):
        make_due(make_schedule(user, name=f"burst {number}"))
    # No time at all: one firing a run (never none), the others left due for the next run.
    assert services.fire_due_schedules(budget_seconds=0) == 1
    assert Task.objects.count() == 1
    assert services.fire_due_schedules(budget_seconds=0) == 1
    assert services.fire_due_schedules(budget_seconds=60) == 1
    assert Task.objects.count() == 3
