from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "apps.accounts"
    label = "accounts"
    verbose_name = "Accounts"

    def ready(self) -> None:
        import apps.accounts.authentication
        import apps.accounts.schema  # noqa: F401  (registers the OpenAPI auth extension)
