"""beat's housekeeping for accounts: expired refresh tokens out of simplejwt's blacklist tables."""

from typing import Any

from celery import shared_task
from celery.signals import beat_init
from django.core.management import call_command

from apps.core.schedules import ensure_periodic_task

FLUSH_TOKENS_TASK_NAME = "accounts.flush_expired_tokens"
FLUSH_TOKENS_SCHEDULE_NAME = "taskflow: flush expired tokens"
FLUSH_TOKENS_EVERY_HOURS = 24


@shared_task(name=FLUSH_TOKENS_TASK_NAME, ignore_result=True, acks_late=False)
def flush_expired_tokens() -> None:
    # Every refresh token issued is a row of token_blacklist_outstandingtoken (and each rotation
    # blacklists one): kept forever unless flushed. A token past its expiry is refused anyway.
    call_command("flushexpiredtokens")


def ensure_flush_tokens_schedule() -> None:
    ensure_periodic_task(
        name=FLUSH_TOKENS_SCHEDULE_NAME,
        task=FLUSH_TOKENS_TASK_NAME,
        every=FLUSH_TOKENS_EVERY_HOURS,
        period="hours",
        expire_seconds=3600,  # a flush missed is done by the next one
    )


@beat_init.connect
def ensure_flush_tokens_schedule_on_beat_start(sender: Any, **kwargs: Any) -> None:
    ensure_flush_tokens_schedule()
