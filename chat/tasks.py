from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from accounts.models import User
from chat import search, services, titles, turns

logger = logging.getLogger(__name__)


@shared_task(
    ignore_result=True,
    acks_late=True,
    soft_time_limit=settings.BYOK_TURN_SOFT_LIMIT,
    time_limit=settings.BYOK_TURN_HARD_LIMIT,
)
def generate_reply(message_id: str) -> None:
    """Run one chat turn, then (opted in, after a first reply) queue its title call. Takes
    the reply's id only; safe to deliver twice."""
    turns.run_turn(message_id)
    try:
        titles.title_call_queue(reply_id=message_id)
    except Exception:  # a title is a nicety: the turn is stored and published already
        logger.exception("turn %s: its title call could not be queued", message_id)


@shared_task(
    ignore_result=True,
    acks_late=True,
    soft_time_limit=settings.BYOK_TURN_SOFT_LIMIT,
    time_limit=settings.BYOK_TURN_HARD_LIMIT,
)
def write_title(title_call_id: str) -> None:
    """Ask a conversation's model for its title (chat.titles). Takes the title call's id
    only; safe to deliver twice."""
    titles.run_title_call(title_call_id)


@shared_task(ignore_result=True)
def reap_stuck_turns() -> None:
    services.turns_reap()
    titles.title_calls_reap()


@shared_task(ignore_result=True)
def purge_temporary_conversations() -> None:
    services.conversations_purge_temporary()


@shared_task(ignore_result=True, soft_time_limit=900, time_limit=960)
def search_index_refresh(owner_id: int) -> None:
    """Bring the owner's search index up to date (chat.search). Takes the owner's id."""
    owner = User.objects.filter(pk=owner_id).first()
    if owner is not None:
        search.search_index_build(owner=owner)
