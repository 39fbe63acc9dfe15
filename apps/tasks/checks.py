"""Start-up checks of settings that would otherwise fail late and quietly."""

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, register


@register()
def time_limits_under_consumer_timeout(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    """RabbitMQ closes the channel of a consumer that holds a message past consumer_timeout;
    with acks_late the message is then redelivered while the first attempt still runs."""
    from apps.handlers.registry import code_task_types
    from apps.tasks.publisher import HARD_LIMIT_MARGIN_SECONDS

    consumer_timeout = settings.TASKFLOW["RABBITMQ_CONSUMER_TIMEOUT_SECONDS"]
    errors: list[CheckMessage] = []
    hard = settings.CELERY_TASK_TIME_LIMIT
    soft = settings.CELERY_TASK_SOFT_TIME_LIMIT
    if not soft < hard < consumer_timeout:
        errors.append(
            Error(
                f"Need TASK_SOFT_TIME_LIMIT_SECONDS ({soft}) < TASK_HARD_TIME_LIMIT_SECONDS "
                f"({hard}) < RABBITMQ_CONSUMER_TIMEOUT_SECONDS ({consumer_timeout}).",
                id="tasks.E001",
            )
        )
    # The code's own limits (no database at check time); the admin checks the ones staff set.
    for spec in code_task_types().values():
        if spec.time_limit_seconds and (
            spec.time_limit_seconds + HARD_LIMIT_MARGIN_SECONDS >= consumer_timeout
        ):
            errors.append(
                Error(
                    f"Task type {spec.name!r}: its time limit ({spec.time_limit_seconds}s) plus "
                    f"{HARD_LIMIT_MARGIN_SECONDS}s must stay under RabbitMQ's consumer_timeout "
                    f"({consumer_timeout}s).",
                    id="tasks.E002",
                )
            )
    return errors


@register()
def rate_limits_without_redis_is_known(app_configs: Any, **kwargs: Any) -> list[CheckMessage]:
    value = settings.TASKFLOW["RATE_LIMITS_WITHOUT_REDIS"]
    if value in ("open", "closed"):
        return []
    return [
        Error(
            f"RATE_LIMITS_WITHOUT_REDIS must be open or closed, not {value!r}.",
            id="tasks.E003",
        )
    ]
