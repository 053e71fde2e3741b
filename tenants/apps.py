from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class TenantsConfig(AppConfig):
    name = "tenants"
    verbose_name = _("Tenants and accounts")

    def ready(self) -> None:
        from tenants import signals  # noqa: F401
        from tenants.api import schema  # noqa: F401  (registers OpenAPI extensions)
