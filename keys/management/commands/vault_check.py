from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand

from keys.models import ProviderKey
from keys.services import provider_key_open
from vault.models import DataKey
from vault.services import OwnerCipher, VaultError


class Command(BaseCommand):
    help = (
        "Open every data key and every provider key with the configured master keys and "
        "list failures by id, without content. Exit status 1 on any failure."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        failures: list[str] = []
        ciphers: dict[int, OwnerCipher] = {}
        by_kek: Counter[str] = Counter()
        for row in DataKey.objects.order_by("pk").iterator():
            by_kek[row.kek_id] += 1
            try:
                ciphers[row.owner_id] = OwnerCipher.from_data_key(row)
            except VaultError as error:
                failures.append(f"data key {row.pk} (user {row.owner_id}): {error}")
        opened = 0
        keys = ProviderKey.objects.exclude(status=ProviderKey.Status.REVOKED).order_by("pk")
        for key in keys.iterator():
            cipher = ciphers.get(key.owner_id)
            if cipher is None:
                failures.append(
                    f"provider key {key.pk}: its owner's data key is missing or unreadable"
                )
                continue
            try:
                provider_key_open(key, cipher=cipher)
                opened += 1
            except VaultError as error:
                failures.append(f"provider key {key.pk}: {error}")
        spread = ", ".join(f"{kek}: {count}" for kek, count in sorted(by_kek.items())) or "none"
        self.stdout.write(
            f"Data keys: {sum(by_kek.values())} ({spread}). Provider keys opened: {opened}."
        )
        if failures:
            for failure in failures:
                self.stderr.write(f"FAILED {failure}")
            self.stderr.write(f"{len(failures)} sealed value(s) failed to open.")
            sys.exit(1)
        self.stdout.write(self.style.SUCCESS("Every sealed value opens."))
