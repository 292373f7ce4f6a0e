from celery import shared_task
from django.core.management import call_command


@shared_task(soft_time_limit=300, time_limit=330, ignore_result=True)
def clear_expired_sessions() -> None:
    """Delete expired sessions (run by Celery beat)."""
    call_command("clearsessions")
