from django.apps import AppConfig
from django.db.models.signals import post_migrate


class OpsConfig(AppConfig):
    """Operator rollups (for the dashboard), staff roles and the dashboard's selectors."""

    name = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from ops.roles import ensure_roles

        # Setup data, like Django's own permissions: recreated after migrate and flush.
        post_migrate.connect(ensure_roles, sender=self, dispatch_uid="ops.ensure_roles")
