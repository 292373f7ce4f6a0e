from django.apps import AppConfig
from django.db.models.signals import post_migrate


class UsageConfig(AppConfig):
    name = "usage"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The shipped price list is setup data: loaded after every migrate (a release's new
        # prices arrive with it; operator overrides are kept) and after a flush.
        post_migrate.connect(_load_prices, sender=self, dispatch_uid="usage.load_prices")


def _load_prices(**kwargs: object) -> None:
    from usage.prices import load_shipped_prices

    load_shipped_prices()
