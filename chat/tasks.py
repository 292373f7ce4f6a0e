from __future__ import annotations

from celery import shared_task
from django.conf import settings

from accounts.models import User
from chat import search, services, turns


@shared_task(
    ignore_result=True,
    acks_late=True,
    soft_time_limit=settings.BYOK_TURN_SOFT_LIMIT,
    time_limit=settings.BYOK_TURN_HARD_LIMIT,
)
def generate_reply(message_id: str) -> None:
    """Run one chat turn. Takes the reply's id only; safe to deliver twice."""
    turns.run_turn(message_id)


@shared_task(ignore_result=True)
def reap_stuck_turns() -> None:
    services.turns_reap()


@shared_task(ignore_result=True)
def purge_temporary_conversations() -> None:
    services.conversations_purge_temporary()


@shared_task(ignore_result=True, soft_time_limit=900, time_limit=960)
def search_index_refresh(owner_id: int) -> None:
    """Bring the owner's search index up to date (chat.search). Takes the owner's id."""
    owner = User.objects.filter(pk=owner_id).first()
    if owner is not None:
        search.search_index_build(owner=owner)
