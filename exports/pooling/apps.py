from django.apps import AppConfig


class PoolingConfig(AppConfig):
    """Consortia, data-sharing agreements and pooled runs: the public-schema side of
    exports (a shared app; the study exports themselves live in each tenant's schema)."""

    name = "exports.pooling"
    label = "pooling"
    default_auto_field = "django.db.models.BigAutoField"
