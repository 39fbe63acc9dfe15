"""Fixtures of the schedule tests: a short minimum interval, and a schedule made by the service."""

from typing import Any

import pytest

from apps.accounts.models import User
from apps.schedules import services
from apps.schedules.models import Schedule


@pytest.fixture(autouse=True)
def short_intervals(settings: Any) -> None:
    settings.TASKFLOW = {**settings.TASKFLOW, "SCHEDULE_MIN_INTERVAL_SECONDS": 1}


def make_schedule(owner: User, **fields: Any) -> Schedule:
    values: dict[str, Any] = {
        "name": "every minute",
        "type": "echo",
        "payload": {"hello": "world"},
        "every_seconds": 60,
    }
    values.update(fields)
    return services.schedule_create(owner=owner, **values)
