"""Exponential backoff with full jitter: wait = uniform(0, min(cap, base * 2**n)), and never more
than MAX_RETRY_DELAY_SECONDS."""

import math
import random
from datetime import timedelta

from django.conf import settings

# The longest a retry waits, whatever a handler asks (RetryableError(retry_after=...)) or a
# type's backoff or the platform's settings say (docs/handlers.md). Without a bound, now + the
# wait overflowed datetime (year 9999), and the attempt could not be recorded at all.
MAX_RETRY_DELAY_SECONDS = 30 * 24 * 3600  # 30 days

# 2**60 times any sane base is past the maximum already; a larger power overflows a float.
_MAX_EXPONENT = 60


def retry_delay(
    retry_number: int, *, base: float | None = None, cap: float | None = None
) -> timedelta:
    """The wait before retry `retry_number` (1 for the first retry)."""
    base = settings.TASKFLOW["RETRY_BACKOFF_BASE_SECONDS"] if base is None else base
    cap = settings.TASKFLOW["RETRY_BACKOFF_CAP_SECONDS"] if cap is None else cap
    exponent = min(_MAX_EXPONENT, max(0, retry_number - 1))
    # The maximum first: min() keeps it over a NaN, which compares false with anything.
    ceiling = max(0.0, min(float(MAX_RETRY_DELAY_SECONDS), cap, base * 2.0**exponent))
    return timedelta(seconds=random.uniform(0, ceiling))


def retry_wait(
    retry_number: int,
    *,
    retry_after: float | None,
    base: float | None = None,
    cap: float | None = None,
) -> timedelta:
    """The wait before retry `retry_number`: the handler's own (`retry_after`, clamped to
    0..MAX_RETRY_DELAY_SECONDS) when it gave one, else the backoff."""
    if retry_after is None or math.isnan(retry_after):
        return retry_delay(retry_number, base=base, cap=cap)
    return timedelta(seconds=min(float(MAX_RETRY_DELAY_SECONDS), max(0.0, retry_after)))
