from django.apps import AppConfig


class HandlersConfig(AppConfig):
    name = "apps.handlers"
    label = "handlers"
    verbose_name = "Task handlers"

    def ready(self) -> None:
        from apps.handlers.registry import load_handler_modules

        load_handler_modules()
