"""Rebuild the operator dashboard's rollups from the usage events.

For a database that had usage before the `ops` rollups existed, or to repair them. Runs in
one transaction, event by event through the same code as the write path (simple and exact;
about 1 ms per event, so a very large history takes a while).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from ops.models import ActivityDaily, ErrorDaily, LatencyDaily, ProviderDaily, UserActivity
from ops.services import operator_rollups_record
from usage.models import UsageEvent
from usage.prices import TokenCounts
from usage.services import TurnUsage


class Command(BaseCommand):
    help = "Rebuild the operator dashboard's rollups (ops.*) from the usage events."

    def handle(self, *args: Any, **options: Any) -> None:
        done = 0
        with transaction.atomic():
            for model in (ProviderDaily, ErrorDaily, LatencyDaily, UserActivity, ActivityDaily):
                model._default_manager.all().delete()
            events = UsageEvent.objects.select_related("owner").order_by("day", "id")
            for event in events.iterator(chunk_size=2000):
                turn = TurnUsage(
                    owner=event.owner,
                    message_id=event.message_id,
                    conversation_id=event.conversation_id,
                    key_id=event.key_id,
                    key_label=event.key_label,
                    preset=event.preset,
                    model=event.model,
                    status=event.status,
                    error_kind=event.error_kind,
                    tokens=TokenCounts(
                        input=event.input_tokens,
                        output=event.output_tokens,
                        cached=event.cached_tokens,
                        cache_write=event.cache_write_tokens,
                    ),
                    reasoning_tokens=event.reasoning_tokens,
                    ttft_ms=event.ttft_ms,
                    latency_ms=event.latency_ms,
                )
                operator_rollups_record(turn=turn, day=event.day, cost_micro=event.cost_micro)
                done += 1
                if done % 10_000 == 0:
                    self.stdout.write(f"{done:,} events…")
        self.stdout.write(self.style.SUCCESS(f"Rebuilt the operator rollups from {done:,} events."))
