from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

from django.core.management.base import BaseCommand
from django.db import transaction

from usage.models import NO_KEY, UsageConversationDaily, UsageDaily, UsageEvent
from usage.recording import usage_rollups_changed

DAILY_FIELDS = (
    "turns",
    "errors",
    "input_tokens",
    "output_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_micro",
    "unpriced_turns",
)
CONVERSATION_FIELDS = ("turns", "input_tokens", "output_tokens", "cost_micro", "unpriced_turns")


class Command(BaseCommand):
    help = (
        "Prove that the daily rollups equal the usage events, and repair them if not "
        "(--check only reports; exit status 1 when anything differs)."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--check", action="store_true", help="Report only; change nothing.")

    def handle(self, *args: Any, check: bool, **options: Any) -> None:
        daily: dict[tuple[Any, ...], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(DAILY_FIELDS, 0)
        )
        labels: dict[tuple[Any, ...], tuple[str, str]] = {}
        conversations: dict[tuple[Any, ...], dict[str, int]] = defaultdict(
            lambda: dict.fromkeys(CONVERSATION_FIELDS, 0)
        )
        for event in UsageEvent.objects.order_by("pk").iterator(chunk_size=5000):
            key = (event.owner_id, event.day, event.key_id or NO_KEY, event.model)
            labels[key] = (event.key_label, event.preset)
            row = daily[key]
            row["turns"] += 1
            row["errors"] += event.status == UsageEvent.Status.ERROR
            row["input_tokens"] += event.input_tokens
            row["output_tokens"] += event.output_tokens
            row["cached_tokens"] += event.cached_tokens
            row["reasoning_tokens"] += event.reasoning_tokens
            row["cost_micro"] += event.cost_micro or 0
            row["unpriced_turns"] += event.cost_micro is None
            if event.conversation_id is not None:
                conv = conversations[(event.owner_id, event.day, event.conversation_id)]
                conv["turns"] += 1
                conv["input_tokens"] += event.input_tokens
                conv["output_tokens"] += event.output_tokens
                conv["cost_micro"] += event.cost_micro or 0
                conv["unpriced_turns"] += event.cost_micro is None
        problems = 0
        self.repaired_owners: set[int] = set()
        with transaction.atomic():
            problems += self._compare(
                UsageDaily,
                daily,
                ("owner_id", "day", "key_id", "model"),
                DAILY_FIELDS,
                check,
                labels,
            )
            problems += self._compare(
                UsageConversationDaily,
                conversations,
                ("owner_id", "day", "conversation_id"),
                CONVERSATION_FIELDS,
                check,
                {},
            )
            if not check:  # cached usage pages of these owners are stale now
                usage_rollups_changed(owner_ids=sorted(self.repaired_owners))
        if problems == 0:
            self.stdout.write(
                self.style.SUCCESS(
                    f"Rollups match {sum(r['turns'] for r in daily.values())} usage events."
                )
            )
            return
        verb = "differ" if check else "repaired"
        self.stdout.write(f"{problems} rollup row(s) {verb}.")
        if check:
            sys.exit(1)

    def _compare(
        self,
        model: Any,
        expected: dict[tuple[Any, ...], dict[str, int]],
        key_fields: tuple[str, ...],
        fields: tuple[str, ...],
        check: bool,
        labels: dict[tuple[Any, ...], tuple[str, str]],
    ) -> int:
        problems = 0
        seen = set()
        for row in model.objects.all().iterator(chunk_size=5000):
            key = tuple(getattr(row, name) for name in key_fields)
            seen.add(key)
            want = expected.get(key)
            have = {name: getattr(row, name) for name in fields}
            if want is None or have != want:
                self.repaired_owners.add(row.owner_id)
            if want is None:
                problems += 1
                self.stdout.write(f"{model.__name__} {key}: no events behind it")
                if not check:
                    row.delete()
            elif have != want:
                problems += 1
                self.stdout.write(f"{model.__name__} {key}: {have} != {want}")
                if not check:
                    model.objects.filter(pk=row.pk).update(**want)
        for key, want in expected.items():
            if key in seen:
                continue
            problems += 1
            self.repaired_owners.add(key[0])
            self.stdout.write(f"{model.__name__} {key}: missing")
            if not check:
                values = dict(
                    zip(
                        (
                            name.removesuffix("_id") if name == "owner_id" else name
                            for name in key_fields
                        ),
                        key,
                        strict=True,
                    )
                )
                if key in labels:
                    values["key_label"], values["preset"] = labels[key]
                model.objects.create(
                    **{("owner_id" if k == "owner" else k): v for k, v in values.items()}, **want
                )
        return problems
