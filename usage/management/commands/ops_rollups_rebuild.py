"""Rebuild the operator dashboard's rollups from the usage events.

For a database that had usage before the operator rollups existed, or to repair them. Runs
in one transaction, event by event through the write path's own declarations
(`usage.recording.OPERATOR_ROLLUPS`; simple and exact, about 1 ms per event, so a very large
history takes a while).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from usage.models import (
    ErrorDaily,
    LatencyDaily,
    ProviderDaily,
    UsageEvent,
    UserActivity,
)
from usage.prices import TokenCounts
from usage.recording import TurnUsage, operator_rollups_record


class Command(BaseCommand):
    help = "Rebuild the operator dashboard's rollups from the usage events."

    def handle(self, *args: Any, **options: Any) -> None:
        done = 0
        with transaction.atomic():
            for model in (ProviderDaily, ErrorDaily, LatencyDaily, UserActivity):
                model._default_manager.all().delete()
            events = UsageEvent.objects.order_by("day", "id")
            for event in events.iterator(chunk_size=2000):
                turn = TurnUsage(
                    owner_id=event.owner_id,
                    message_id=event.message_id,
                    conversation_id=event.conversation_id,
                    key_id=event.key_id,
                    key_label=event.key_label,
                    preset=event.preset,
                    model=event.model,
                    status=event.status,
                    error_kind=event.error_kind,
                    purpose=event.purpose,
                    tokens=TokenCounts(
                        input=event.input_tokens,
                        output=event.output_tokens,
                        cached=event.cached_tokens,
                        cache_write=event.cache_write_tokens,
                    ),
                    reasoning_tokens=event.reasoning_tokens,
                    ttft_ms=event.ttft_ms,
                    latency_ms=event.latency_ms,
                    price=None,  # the event's own cost is replayed, not recomputed
                )
                operator_rollups_record(turn=turn, day=event.day, cost_micro=event.cost_micro)
                done += 1
                if done % 10_000 == 0:
                    self.stdout.write(f"{done:,} events…")
        self.stdout.write(self.style.SUCCESS(f"Rebuilt the operator rollups from {done:,} events."))
