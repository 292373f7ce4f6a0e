from django.contrib.admin.apps import AdminConfig


class OperatorAdminConfig(AdminConfig):
    """django.contrib.admin with the operator site as `admin.site`, so every app's
    `@admin.register` lands on it."""

    default_site = "ops.site.OperatorAdminSite"
