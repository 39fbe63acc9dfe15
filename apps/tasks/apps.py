from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "apps.tasks"
    label = "tasks"
    verbose_name = "Tasks"

    def ready(self) -> None:
        # taskflow.celery: the Celery app, before anything publishes. Shared tasks
        # (apps.tasks.tasks.execute) bind to the current app, which must be this one, and
        # taskflow/__init__.py does not import it (the API client must import without Django).
        import taskflow.celery  # noqa: F401
        from apps.tasks import checks  # noqa: F401  (registers the system checks)
