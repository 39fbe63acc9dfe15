from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        # Signal receivers: the cached user (authentication), the refresh tokens (signals); and
        # the OpenAPI auth extension (schema).
        import apps.accounts.authentication
        import apps.accounts.schema
        import apps.accounts.signals  # noqa: F401
