"""TaskFlow: the Django project (settings, urls, Celery app)."""

from taskflow.celery import app as celery_app

__all__ = ["celery_app"]
