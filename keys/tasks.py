from __future__ import annotations

from celery import shared_task

from keys import services


@shared_task(soft_time_limit=60, time_limit=75, ignore_result=True)
def verify_provider_key(key_id: str) -> None:
    """Check one key against its provider. Takes the key's id, never the key."""
    services.provider_key_verify(key_id=key_id)


@shared_task(soft_time_limit=300, time_limit=330, ignore_result=True)
def recheck_provider_keys() -> None:
    """Beat job: mark expired keys, and queue a fresh check of valid keys checked long ago."""
    services.provider_keys_expire()
    for key_id in services.provider_keys_due_for_recheck():
        services.request_recheck_by_id(key_id)
