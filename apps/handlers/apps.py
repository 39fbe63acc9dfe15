from typing import Any

from django.apps import AppConfig
from django.db.models.signals import post_migrate


class HandlersConfig(AppConfig):
    name = "apps.handlers"
    label = "handlers"
    verbose_name = "Task handlers"

    def ready(self) -> None:
        from apps.handlers import selectors  # noqa: F401  (connects the cache's invalidation)
        from apps.handlers.registry import load_handler_modules

        load_handler_modules()
        post_migrate.connect(_sync_task_types, sender=self)


def _sync_task_types(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """After `migrate`: every code type gets its row in the task type table."""
    from apps.handlers.services import task_types_sync_if_ready

    task_types_sync_if_ready()
