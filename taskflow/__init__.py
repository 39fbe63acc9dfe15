"""TaskFlow: the Django project (settings, urls, Celery app), and the API client (taskflow.client).

The Celery app is loaded on first use of `taskflow.celery_app` (and by apps.tasks when Django
starts), not on import: `import taskflow.client` must work in a plain Python process, with
neither Django nor its settings.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from celery import Celery

    celery_app: Celery

__all__ = ["celery_app"]


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from taskflow.celery import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
