from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from axes.signals import user_locked_out

        from accounts import signals

        user_locked_out.connect(signals.on_locked_out, dispatch_uid="accounts.locked_out")
