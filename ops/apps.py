from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operator rollups (for the dashboard), staff roles and the dashboard's selectors."""

    name = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"
