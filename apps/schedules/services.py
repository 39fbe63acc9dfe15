"""Schedule writes: create, change, delete, run now, and beat's firing of due schedules.

A firing creates its task through the tasks app's create service (apps.tasks.services.task_create),
on behalf of the schedule's owner: the same checks, the same active-task cap, the same publish
after commit.
"""

import logging
import time
import uuid
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, InterfaceError, OperationalError, transaction
from django.utils.timezone import now

from apps.accounts.models import User
from apps.accounts.services import user_lock
from apps.core.exceptions import ApplicationError, NotFound
from apps.schedules.models import Schedule
from apps.schedules.timing import check_timing, next_time
from apps.tasks.models import Task
from apps.tasks.services import check_type_and_payload, task_create

logger = logging.getLogger(__name__)
_UNSET: Any = object()

# Schedules each due scan reads; each is then claimed and fired in a transaction of its own.
FIRE_BATCH_SIZE = 100
_NAME_CONSTRAINT = "schedule_unique_name_per_owner"


def _name_taken(name: str) -> ApplicationError:
    return ApplicationError(
        f"You already have a schedule named {name!r}.",
        code="schedule_name_taken",
        fields={"name": [f"You already have a schedule named {name!r}."]},
    )


def _check_name(name: str) -> str:
    if not name.strip():
        raise ApplicationError(
            "Invalid input: name: This field may not be blank.",
            code="validation_error",
            fields={"name": ["This field may not be blank."]},
        )
    return name


def _check_schedule_cap(owner: User) -> None:
    """429 too_many_schedules if the owner has MAX_SCHEDULES_PER_USER schedules already. The
    owner's row is locked first, so two creates at once cannot both pass the count."""
    cap = settings.TASKFLOW["MAX_SCHEDULES_PER_USER"]
    if not cap:
        return
    user_lock(user_id=owner.pk)  # FOR NO KEY UPDATE: the owner's task creates do not wait
    if Schedule.objects.filter(owner=owner).count() >= cap:
        raise ApplicationError(
            f"You have too many schedules: at most {cap}. Delete some first.",
            code="too_many_schedules",
            status_code=429,
            extra={"limit": cap},
        )


def _normal_cron(cron: str | None) -> str:
    return " ".join((cron or "").split())


def _save(schedule: Schedule, **save_options: Any) -> None:
    """Save; a name the owner already uses is a 400 schedule_name_taken."""
    try:
        with transaction.atomic():  # a savepoint: the name's IntegrityError leaves the rest usable
            schedule.save(**save_options)
    except IntegrityError as exc:
        if _NAME_CONSTRAINT in str(exc):
            raise _name_taken(schedule.name) from None
        raise


@transaction.atomic
def schedule_create(
    *,
    owner: User,
    name: str,
    type: str,
    payload: Any,
    cron: str | None = None,
    every_seconds: int | None = None,
    timezone: str = "UTC",
    enabled: bool = True,
) -> Schedule:
    """A new schedule; its payload is checked as a task create checks it, now."""
    _check_name(name)
    check_type_and_payload(owner=owner, type=type, payload=payload)
    cron = _normal_cron(cron)
    check_timing(cron=cron, every_seconds=every_seconds, timezone=timezone)
    _check_schedule_cap(owner)
    current = now()
    schedule = Schedule(
        owner=owner,
        name=name,
        type=type,
        # As given, not as the type's serializer cleaned it: each firing's create checks it
        # again, and a create takes what its client sent.
        payload=payload,
        cron=cron,
        every_seconds=every_seconds,
        timezone=timezone,
        enabled=enabled,
        next_run_at=(
            next_time(cron=cron, every_seconds=every_seconds, timezone=timezone, after=current)
            if enabled
            else None
        ),
    )
    _save(schedule, force_insert=True)
    return schedule


def schedule_update(
    *,
    schedule: Schedule,
    name: str = _UNSET,
    type: str = _UNSET,
    payload: Any = _UNSET,
    cron: str | None = _UNSET,
    every_seconds: int | None = _UNSET,
    timezone: str = _UNSET,
    enabled: bool = _UNSET,
) -> Schedule:
    """Change a schedule. Giving cron (or every_seconds) alone switches to it: the other is
    cleared. Giving cron, every_seconds, timezone or enabled sets next_run_at anew from now
    (null while disabled)."""
    with transaction.atomic():
        # Locked: a firing of this schedule (which skips locked rows) cannot overwrite the change.
        locked = Schedule.objects.select_for_update().filter(id=schedule.id).first()
        if locked is None:
            raise NotFound("No such schedule.", code="schedule_not_found")
        schedule = locked
        changed: list[str] = []
        if name is not _UNSET:
            schedule.name = _check_name(name)
            changed.append("name")
        if type is not _UNSET or payload is not _UNSET:
            new_type = schedule.type if type is _UNSET else type
            new_payload = schedule.payload if payload is _UNSET else payload
            check_type_and_payload(owner=schedule.owner, type=new_type, payload=new_payload)
            schedule.type, schedule.payload = new_type, new_payload
            changed += ["type", "payload"]
        timing_given = any(v is not _UNSET for v in (cron, every_seconds, timezone, enabled))
        if cron is not _UNSET:
            schedule.cron = _normal_cron(cron)
            if schedule.cron and every_seconds is _UNSET:
                schedule.every_seconds = None  # switching from an interval to a cron
        if every_seconds is not _UNSET:
            schedule.every_seconds = every_seconds
            if every_seconds is not None and cron is _UNSET:
                schedule.cron = ""  # switching from a cron to an interval
        if timezone is not _UNSET:
            schedule.timezone = timezone
        if enabled is not _UNSET:
            schedule.enabled = enabled
        if timing_given:
            if any(v is not _UNSET for v in (cron, every_seconds, timezone)):
                # Only a new timing is checked: switching a schedule off or on asks nothing of
                # the one it has (which a raised SCHEDULE_MIN_INTERVAL_SECONDS may refuse now).
                check_timing(
                    cron=schedule.cron,
                    every_seconds=schedule.every_seconds,
                    timezone=schedule.timezone,
                )
            schedule.next_run_at = _next_from_now(schedule)
            changed += ["cron", "every_seconds", "timezone", "enabled", "next_run_at"]
        if changed:
            _save(schedule, update_fields=[*dict.fromkeys(changed), "updated_at"])
    return schedule


def _next_from_now(schedule: Schedule) -> datetime | None:
    if not schedule.enabled:
        return None
    return next_time(
        cron=schedule.cron,
        every_seconds=schedule.every_seconds,
        timezone=schedule.timezone,
        after=now(),
    )


def schedules_set_enabled(
    *, schedule_ids: list[uuid.UUID], enabled: bool
) -> tuple[int, dict[str, str]]:
    """Enable or disable schedules (the admin's actions): how many changed, and why the others
    could not be (by name: a timing whose next time no longer computes). Enabling computes
    next_run_at from now."""
    changed = 0
    refused: dict[str, str] = {}
    for schedule in Schedule.objects.filter(id__in=schedule_ids, enabled=not enabled):
        try:
            schedule_update(schedule=schedule, enabled=enabled)
        except ApplicationError as exc:
            refused[schedule.name] = exc.message
            continue
        changed += 1
    return changed, refused


def schedule_delete(*, schedule: Schedule) -> None:
    """Delete a schedule; the tasks it created stay."""
    schedule.delete()


def schedule_run_now(
    *, schedule: Schedule, idempotency_key: str | None = None
) -> tuple[Task, bool]:
    """Create the schedule's task now, once, leaving next_run_at as it is: (the task, whether
    it was created). With a key, a request retried finds the task the first one made, as a task
    create's does. The create's errors (the active-task cap, the type disabled...) are the
    caller's."""
    with transaction.atomic():
        task, created = task_create(
            owner=schedule.owner,
            type=schedule.type,
            payload=schedule.payload,
            idempotency_key=idempotency_key,
        )
        if created:
            Schedule.objects.filter(id=schedule.id).update(
                last_run_at=task.created_at, last_task_id=task.id, last_error="", updated_at=now()
            )
    return task, created


# --- Firing, from beat's heartbeat (apps.tasks.tasks.release_due) --------------------------


def firing_key(schedule_id: uuid.UUID, due: datetime) -> str:
    """The idempotency key of a schedule's task for one due time: a firing repeated (two beats,
    a crash after the create) finds the task the first one made instead of making another."""
    return f"schedule:{schedule_id}:{due.isoformat()}"


def fire_due_schedules(
    *,
    batch_size: int = FIRE_BATCH_SIZE,
    max_batches: int = 20,
    budget_seconds: float | None = None,
) -> int:
    """Create a task for each enabled schedule whose next_run_at has come; how many tasks were
    created.

    A run starts no new firing once it has taken `budget_seconds` (by default beat's interval,
    RELEASE_INTERVAL_MS; at least one firing a run): the next heartbeat goes on. A burst of due
    schedules (~6 ms each) then keeps about one maintenance worker process busy, not one per
    heartbeat that came meanwhile, and the releaser's messages find a free one.

    Each schedule is claimed (FOR UPDATE SKIP LOCKED: another beat, or a PATCH, holding it is
    passed over) and fired in a transaction of its own, so one schedule's failure holds back no
    other. Runs missed while beat was down are coalesced: the schedule fires once, and
    next_run_at becomes its next time after now (as Celery beat and sidekiq-cron do)."""
    if budget_seconds is None:
        budget_seconds = settings.TASKFLOW["RELEASE_INTERVAL_MS"] / 1000
    ends_at = time.monotonic() + budget_seconds
    fired = 0
    seen: set[uuid.UUID] = set()
    for _ in range(max_batches):
        current = now()
        due_ids = list(
            Schedule.objects.filter(enabled=True, next_run_at__lte=current)
            .exclude(id__in=seen)
            .order_by("next_run_at")
            .values_list("id", flat=True)[:batch_size]
        )
        for schedule_id in due_ids:
            if seen and time.monotonic() >= ends_at:
                return fired
            seen.add(schedule_id)
            fired += _fire_one(schedule_id)
        if len(due_ids) < batch_size:
            break
    return fired


def _fire_one(schedule_id: uuid.UUID) -> int:
    """Fire one due schedule if it is still due and no one else holds it: 1 if a task was
    created."""
    try:
        with transaction.atomic():
            schedule = (
                Schedule.objects.select_for_update(skip_locked=True, of=("self",))
                .select_related("owner")
                .filter(id=schedule_id, enabled=True, next_run_at__lte=now())
                .first()
            )
            if schedule is None:
                return 0  # fired by another beat meanwhile, changed, or held by a PATCH
            return _fire(schedule)
    except (OperationalError, InterfaceError):
        raise  # the database is away: the next heartbeat tries again
    except Exception as exc:
        # A bug (not a refusal of the create): the firing rolled back. Record it and move the
        # schedule on anyway, so that it cannot fail on every heartbeat.
        logger.exception("Schedule %s failed to fire", schedule_id)
        _record_failure(schedule_id, f"Internal error: {type(exc).__name__}: {exc}")
        return 0


def _fire(schedule: Schedule) -> int:
    due = schedule.next_run_at
    assert due is not None
    created = False
    error = ""
    task_id: uuid.UUID | None = None
    if not schedule.owner.is_active:
        error = "The owner's account is deactivated."
    else:
        try:
            task, created = task_create(
                owner=schedule.owner,
                type=schedule.type,
                payload=schedule.payload,
                idempotency_key=firing_key(schedule.id, due),
            )
            task_id = task.id
        except ApplicationError as exc:
            # Refused as a create would be (the cap, the type disabled or gone, the payload no
            # longer valid): recorded on the schedule, which still moves on.
            error = f"{exc.code}: {exc.message}"
    current = now()
    if error:
        logger.warning(
            "Schedule %s (%s) created no task for %s: %s",
            schedule.id,
            schedule.name,
            due.isoformat(),
            error,
        )
    # last_run_at: when it last fired; last_task_id: what that firing created (None: see
    # last_error).
    schedule.last_run_at, schedule.last_task_id, schedule.last_error = current, task_id, error
    schedule.next_run_at = next_time(
        cron=schedule.cron,
        every_seconds=schedule.every_seconds,
        timezone=schedule.timezone,
        after=current,
        anchor=due,
    )
    schedule.save(
        update_fields=["last_run_at", "last_task_id", "last_error", "next_run_at", "updated_at"]
    )
    return 1 if created else 0


def _record_failure(schedule_id: uuid.UUID, error: str) -> None:
    with transaction.atomic():
        schedule = (
            Schedule.objects.select_for_update(skip_locked=True)
            .filter(id=schedule_id, enabled=True)
            .first()
        )
        if schedule is None:
            return
        try:
            schedule.next_run_at = _next_from_now(schedule)
        except (OperationalError, InterfaceError):
            raise
        except Exception:
            # The timing itself no longer computes (a 400 from its check, or anything else:
            # raised out of the run, it held back every schedule due after it, on every
            # heartbeat): stop firing it.
            logger.exception("Schedule %s: its next time does not compute", schedule_id)
            schedule.enabled, schedule.next_run_at = False, None
        schedule.last_error = error[:2000]
        schedule.save(update_fields=["enabled", "next_run_at", "last_error", "updated_at"])
