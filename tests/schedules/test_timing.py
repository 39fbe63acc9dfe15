"""Next times: cron expressions in a zone (across DST changes) and intervals. No database."""

from datetime import UTC, datetime, timedelta

import pytest

from apps.core.exceptions import ApplicationError
from apps.schedules.timing import check_timing, next_cron_time, next_interval_time


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def test_a_daily_cron_keeps_its_wall_clock_time_across_spring_forward():
    # New York moves from EST (-5) to EDT (-4) on 2026-03-08 at 02:00.
    first = next_cron_time("0 9 * * *", "America/New_York", after=utc(2026, 3, 7, 12))
    assert first == utc(2026, 3, 7, 14)  # 09:00 EST
    second = next_cron_time("0 9 * * *", "America/New_York", after=first)
    assert second == utc(2026, 3, 8, 13)  # 09:00 EDT: 23 hours later
    third = next_cron_time("0 9 * * *", "America/New_York", after=second)
    assert third - second == timedelta(hours=24)


def test_a_cron_time_the_clocks_skip_fires_once_just_after_the_jump():
    # Paris skips 02:00-03:00 on 2026-03-29: 02:30 does not exist that day.
    skipped = next_cron_time("30 2 * * *", "Europe/Paris", after=utc(2026, 3, 28, 12))
    assert skipped == utc(2026, 3, 29, 1)  # 03:00 CEST, the first minute after the jump
    following = next_cron_time("30 2 * * *", "Europe/Paris", after=skipped)
    assert following == utc(2026, 3, 30, 0, 30)  # 02:30 CEST


def test_an_hourly_cron_fires_in_each_real_hour_of_the_repeated_hour_in_autumn():
    # Paris repeats 02:00-03:00 on 2026-10-25 (CEST +2, then CET +1).
    times = []
    after = utc(2026, 10, 24, 22, 30)  # 00:30 CEST
    for _ in range(4):
        after = next_cron_time("0 * * * *", "Europe/Paris", after=after)
        times.append(after)
    assert times == [
        utc(2026, 10, 24, 23),
        utc(2026, 10, 25, 0),
        utc(2026, 10, 25, 1),
        utc(2026, 10, 25, 2),
    ]


@pytest.mark.parametrize(
    ("cron", "zone", "after", "once", "next_day"),
    [
        # Paris repeats 02:00-03:00 on 2026-10-25: 02:30 CEST (00:30Z), then 02:30 CET (01:30Z).
        (
            "30 2 * * *",
            "Europe/Paris",
            utc(2026, 10, 24, 12),
            utc(2026, 10, 25, 0, 30),
            utc(2026, 10, 26, 1, 30),
        ),
        # New York repeats 01:00-02:00 on 2026-11-01 (EDT -4, then EST -5).
        (
            "30 1 * * *",
            "America/New_York",
            utc(2026, 10, 31, 12),
            utc(2026, 11, 1, 5, 30),
            utc(2026, 11, 2, 6, 30),
        ),
        # Lord Howe repeats 01:30-02:00 on 2026-04-05 (+11, then +10:30).
        (
            "45 1 * * *",
            "Australia/Lord_Howe",
            utc(2026, 4, 4, 0),
            utc(2026, 4, 4, 14, 45),
            utc(2026, 4, 5, 15, 15),
        ),
    ],
)
def test_a_cron_at_a_fixed_time_fires_once_in_the_repeated_hour_in_autumn(
    cron, zone, after, once, next_day
):
    # A daily job runs once a day, DST or not (as cron does: a job whose minute and hour are
    # both fixed is not run again when the clocks go back; one with a * in them runs each pass).
    first = next_cron_time(cron, zone, after=after)
    assert first == once
    assert next_cron_time(cron, zone, after=first) == next_day


def test_a_cron_with_a_wildcard_minute_fires_in_both_passes_of_the_repeated_hour():
    times = []
    after = utc(2026, 10, 24, 23, 50)  # 01:50 CEST
    for _ in range(3):
        after = next_cron_time("*/30 2 * * *", "Europe/Paris", after=after)
        times.append(after)
    assert times == [utc(2026, 10, 25, 0), utc(2026, 10, 25, 0, 30), utc(2026, 10, 25, 1)]


def test_a_cron_is_read_in_utc_by_default():
    assert next_cron_time("*/15 * * * *", "UTC", after=utc(2026, 1, 1, 10, 7)) == utc(
        2026, 1, 1, 10, 15
    )


def test_an_interval_keeps_its_phase_and_skips_missed_runs():
    anchor = utc(2026, 1, 1, 12)
    assert next_interval_time(60, anchor=anchor, after=anchor) == utc(2026, 1, 1, 12, 1)
    # beat was away 10.5 minutes: one run now-ish, the next on the anchor's grid.
    later = anchor + timedelta(minutes=10, seconds=30)
    assert next_interval_time(60, anchor=anchor, after=later) == utc(2026, 1, 1, 12, 11)


@pytest.mark.parametrize(
    ("timing", "fields"),
    [
        ({"cron": "* * * *"}, {"cron"}),
        ({"cron": "0 0 * * * *"}, {"cron"}),  # 6 fields: seconds are not cron
        ({"cron": "61 * * * *"}, {"cron"}),
        ({"cron": "0 0 30 2 *"}, {"cron"}),  # never
        ({"cron": "H * * * *"}, {"cron"}),
        ({"cron": "bogus"}, {"cron"}),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, {"timezone"}),
        ({"cron": "0 9 * * *", "timezone": "../etc/passwd"}, {"timezone"}),
        ({"cron": "0 9 * * *", "every_seconds": 60}, {"cron", "every_seconds"}),
        ({}, {"cron", "every_seconds"}),
        ({"every_seconds": 59}, {"every_seconds"}),
        ({"every_seconds": 0}, {"every_seconds"}),
        ({"every_seconds": 10**12}, {"every_seconds"}),
    ],
)
def test_bad_timing_is_a_400_on_the_field(settings, timing, fields):
    settings.TASKFLOW = {**settings.TASKFLOW, "SCHEDULE_MIN_INTERVAL_SECONDS": 60}
    values = {"cron": "", "every_seconds": None, "timezone": "UTC", **timing}
    with pytest.raises(ApplicationError) as refused:
        check_timing(**values)
    assert refused.value.code == "validation_error"
    assert set(refused.value.fields) == fields, refused.value.fields
    assert refused.value.message


def test_good_timing_passes(settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "SCHEDULE_MIN_INTERVAL_SECONDS": 60}
    check_timing(cron="0 9 * * MON-FRI", every_seconds=None, timezone="Europe/Paris")
    check_timing(cron="", every_seconds=60, timezone="UTC")
