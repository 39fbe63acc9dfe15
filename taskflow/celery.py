"""The Celery application. Configuration lives in settings under the CELERY_ namespace."""

import os
from typing import Any

from celery import Celery
from celery.signals import worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskflow.settings")

app = Celery("taskflow")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _add_worker_steps() -> None:
    from apps.tasks.worker_timer import CompactTimerStep

    app.steps["worker"].add(CompactTimerStep)


_add_worker_steps()


@worker_process_init.connect
def freeze_loaded_objects_in_pool_process(**kwargs: Any) -> None:
    from taskflow.startup import freeze_loaded_objects

    freeze_loaded_objects()
