"""Readiness checks of the services TaskFlow depends on."""

import logging
from collections.abc import Callable

from django.db import connection
from django_redis import get_redis_connection

logger = logging.getLogger(__name__)


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    from taskflow.celery import app

    # One quick retry, no back-off pause: a probe must answer within its own timeout.
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, timeout=2)


def check_redis() -> None:
    get_redis_connection("default").ping()


CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
    "redis": check_redis,
}


def readiness() -> dict[str, str]:
    """Each dependency's state: "ok" or what went wrong."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
        except Exception as exc:
            logger.warning("Readiness check %s failed: %s", name, exc)
            results[name] = f"unavailable: {type(exc).__name__}: {exc}"[:300]
        else:
            results[name] = "ok"
    return results
