from django.apps import AppConfig, apps
from django.db.models.signals import post_migrate

from ops.roles import ensure_roles


class OpsConfig(AppConfig):
    """The operator dashboard (its figures are usage's rollups), staff roles, the admin."""

    name = "ops"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Setup data, like Django's own permissions: recreated after migrate and flush. Sent
        # with auth's post_migrate (ops has no models, so it gets no signal of its own), which
        # comes after the permissions of the apps listed before it in INSTALLED_APPS.
        post_migrate.connect(
            ensure_roles, sender=apps.get_app_config("auth"), dispatch_uid="ops.ensure_roles"
        )
