from celery import shared_task
from django.core.management import call_command


@shared_task(soft_time_limit=300, time_limit=330)
def clear_expired_sessions() -> None:
    """Delete expired sessions and expired account exports (run by Celery beat)."""
    from accounts.exports import account_exports_expire

    call_command("clearsessions")
    account_exports_expire()


@shared_task(soft_time_limit=600, time_limit=660)
def build_account_export(export_id: str) -> None:
    from accounts.exports import account_export_build

    account_export_build(export_id=export_id)


@shared_task(soft_time_limit=300, time_limit=330)
def expire_account_exports() -> None:
    from accounts.exports import account_exports_expire

    account_exports_expire()
