"""Exponential backoff with full jitter: wait = uniform(0, min(cap, base * 2**n))."""

import random
from datetime import timedelta

from django.conf import settings


def retry_delay(
    retry_number: int, *, base: float | None = None, cap: float | None = None
) -> timedelta:
    """The wait before retry `retry_number` (1 for the first retry)."""
    base = settings.TASKFLOW["RETRY_BACKOFF_BASE_SECONDS"] if base is None else base
    cap = settings.TASKFLOW["RETRY_BACKOFF_CAP_SECONDS"] if cap is None else cap
    ceiling = min(cap, base * (2 ** max(0, retry_number - 1)))
    return timedelta(seconds=random.uniform(0, ceiling))
