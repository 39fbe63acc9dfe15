"""When a schedule fires: cron expressions (croniter) in an IANA zone, or a fixed interval.

Pure functions, no database: the services check a schedule's timing with `check_timing` and
compute its next firing with `next_time`.
"""

import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from croniter.croniter import CroniterError
from django.conf import settings

from apps.core.exceptions import ApplicationError

CRON_FIELDS = "minute hour day-of-month month day-of-week"
# An interval longer than a year is a cron job's business (and stays well within the column).
MAX_INTERVAL_SECONDS = 366 * 24 * 3600
# An H or R standing alone (not in a name such as THU or FRI).
_EXTENSION = re.compile(r"(?<![A-Z])[HR](?![A-Z])")


def _invalid(field: str, problem: str) -> ApplicationError:
    return ApplicationError(
        f"Invalid input: {field}: {problem}", code="validation_error", fields={field: [problem]}
    )


def zone(name: str) -> ZoneInfo:
    """The IANA zone `name`, or a 400 on `timezone`."""
    try:
        # ZoneInfo also takes paths relative to the zone database ("../x" is a ValueError).
        if not name or name != name.strip() or name.startswith("/"):
            raise ValueError(name)
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _invalid(
            "timezone", f"Unknown time zone {name!r}: give an IANA name, e.g. Europe/Paris or UTC."
        ) from None


def min_interval_seconds() -> int:
    return int(settings.TASKFLOW["SCHEDULE_MIN_INTERVAL_SECONDS"])


def check_timing(*, cron: str, every_seconds: int | None, timezone: str) -> None:
    """A 400 naming the field unless exactly one of cron and every_seconds is given and valid,
    and the zone is known."""
    zone(timezone)
    if bool(cron) == (every_seconds is not None):
        problem = "Give exactly one of cron and every_seconds."
        raise ApplicationError(
            f"Invalid input: {problem}",
            code="validation_error",
            fields={"cron": [problem], "every_seconds": [problem]},
        )
    if cron:
        _check_cron(cron, timezone)
        return
    assert every_seconds is not None
    least = min_interval_seconds()
    if not least <= every_seconds <= MAX_INTERVAL_SECONDS:
        raise _invalid(
            "every_seconds",
            f"Must be between {least} and {MAX_INTERVAL_SECONDS} seconds (a year).",
        )


def _check_cron(cron: str, timezone: str) -> None:
    fields = cron.split()
    if len(fields) != 5:
        raise _invalid(
            "cron",
            f"A cron expression has 5 fields ({CRON_FIELDS}), e.g. '0 9 * * 1-5'; "
            f"{cron!r} has {len(fields)}.",
        )
    if _EXTENSION.search(cron.upper()):
        # croniter's hashed (H) and random (R) values are not cron: refuse them plainly.
        raise _invalid("cron", f"{cron!r} is not a standard cron expression (no H or R values).")
    try:
        croniter(cron)
    except (CroniterError, ValueError, KeyError, IndexError, TypeError, OverflowError) as exc:
        raise _invalid("cron", f"Not a valid cron expression: {exc}") from None
    try:
        next_cron_time(cron, timezone, after=datetime.now(tz=UTC))
    except (CroniterError, ValueError, OverflowError):
        # e.g. "0 0 30 2 *": February 30th never comes.
        raise _invalid("cron", f"{cron!r} never matches a date.") from None


def next_cron_time(cron: str, timezone: str, *, after: datetime) -> datetime:
    """The first time strictly after `after` that `cron` matches on the wall clock of
    `timezone`, in UTC. Across DST: a time the clocks skip fires at the first minute after
    the jump (croniter's rule). In the hour that repeats, a cron with a wildcard minute or hour
    (`0 * * * *`, `*/15 2 * * *`) fires in each real hour; one at a fixed time (`30 2 * * *`)
    only in the first, as cron does: a daily job stays once a day."""
    tz = zone(timezone)
    times = croniter(cron, after.astimezone(tz))
    fixed_time = not any(field.startswith("*") for field in cron.split()[:2])
    while True:
        found: datetime = times.get_next(datetime)
        if not (fixed_time and _second_pass(found, tz)):
            return found.astimezone(UTC)


def _second_pass(moment: datetime, tz: ZoneInfo) -> bool:
    """Whether `moment` is the second of the two real times its wall-clock time names (the
    hour the clocks repeat when they go back)."""
    wall = moment.replace(tzinfo=None)
    first = wall.replace(tzinfo=tz, fold=0).astimezone(UTC)
    second = wall.replace(tzinfo=tz, fold=1).astimezone(UTC)
    return first < second and moment.astimezone(UTC) == second


def next_interval_time(every_seconds: int, *, anchor: datetime, after: datetime) -> datetime:
    """The first time strictly after `after` on the grid anchor + k * every_seconds (k >= 1):
    firings keep their phase (no drift from beat's latency), and missed ones are skipped."""
    step = timedelta(seconds=every_seconds)
    if anchor > after:
        return anchor
    steps = int((after - anchor) / step) + 1
    return anchor + steps * step


def next_time(
    *,
    cron: str,
    every_seconds: int | None,
    timezone: str,
    after: datetime,
    anchor: datetime | None = None,
) -> datetime:
    """The schedule's next firing after `after`. An interval counts from `anchor` (the due time
    just fired), else from `after` itself (a new or re-enabled schedule: one interval later)."""
    if cron:
        return next_cron_time(cron, timezone, after=after)
    assert every_seconds is not None
    return next_interval_time(every_seconds, anchor=anchor or after, after=after)
