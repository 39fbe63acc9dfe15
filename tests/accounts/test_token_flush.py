"""beat flushes expired refresh tokens (simplejwt's flushexpiredtokens) once a day."""

from datetime import timedelta

from django.utils import timezone
from django_celery_beat.models import PeriodicTask
from rest_framework_simplejwt.token_blacklist.models import BlacklistedToken, OutstandingToken
from rest_framework_simplejwt.tokens import RefreshToken

from apps.accounts import tasks as account_tasks
from taskflow.celery import app


def test_beat_flushes_expired_tokens_once_a_day(db):
    account_tasks.ensure_flush_tokens_schedule()
    account_tasks.ensure_flush_tokens_schedule()  # at every beat start: still one schedule
    [schedule] = PeriodicTask.objects.filter(task=account_tasks.FLUSH_TOKENS_TASK_NAME)
    assert schedule.enabled
    assert schedule.queue == "maintenance"
    assert (schedule.interval.every, schedule.interval.period) == (24, "hours")
    app.loader.import_default_modules()  # what a worker does at start: the task is known to it
    assert account_tasks.FLUSH_TOKENS_TASK_NAME in app.tasks


def test_the_flush_drops_expired_tokens_and_their_blacklist_entries(user):
    expired, live = RefreshToken.for_user(user), RefreshToken.for_user(user)
    expired.blacklist()
    live.blacklist()
    OutstandingToken.objects.filter(jti=expired["jti"]).update(
        expires_at=timezone.now() - timedelta(seconds=1)
    )
    account_tasks.flush_expired_tokens()  # what the worker runs for beat
    assert list(OutstandingToken.objects.values_list("jti", flat=True)) == [live["jti"]]
    assert list(BlacklistedToken.objects.values_list("token__jti", flat=True)) == [live["jti"]]
