from django.apps import AppConfig


class PrivacyConfig(AppConfig):
    """A user's data taken away (export) or destroyed (deletion): reads every app."""

    name = "privacy"
    verbose_name = "Privacy"
    default_auto_field = "django.db.models.BigAutoField"
