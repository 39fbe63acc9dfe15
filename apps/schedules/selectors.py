"""Schedule reads. A user sees only their own schedules; anything else is a 404."""

import uuid

from django.db.models import QuerySet

from apps.accounts.models import User
from apps.core.exceptions import NotFound
from apps.schedules.models import Schedule


def schedule_list(*, user: User) -> QuerySet[Schedule]:
    return Schedule.objects.filter(owner=user)


def schedule_get(*, user: User, schedule_id: uuid.UUID | str) -> Schedule:
    schedule = Schedule.objects.filter(owner=user, id=schedule_id).first()
    if schedule is None:
        raise NotFound("No such schedule.", code="schedule_not_found")
    return schedule
