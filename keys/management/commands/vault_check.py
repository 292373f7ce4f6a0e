from __future__ import annotations

import sys
from collections import Counter
from typing import Any

from django.core.management.base import BaseCommand

from keys import vault
from keys.models import DataKey, ProviderKey
from keys.services import get_keyring, secret_context


class Command(BaseCommand):
    help = (
        "Open every sealed value with the configured master keys and list failures by id, "
        "without content. Exit status 1 on any failure."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        keyring = get_keyring()
        failures: list[str] = []
        deks: dict[int, bytes] = {}
        by_kek: Counter[str] = Counter()
        for row in DataKey.objects.order_by("pk").iterator():
            by_kek[row.kek_id] += 1
            try:
                deks[row.owner_id] = vault.unwrap_dek(
                    keyring, bytes(row.wrapped), user_id=str(row.owner_id)
                )
            except vault.VaultError as error:
                failures.append(f"data key {row.pk} (user {row.owner_id}): {error}")
        opened = 0
        keys = ProviderKey.objects.exclude(status=ProviderKey.Status.REVOKED).order_by("pk")
        for key in keys.iterator():
            dek = deks.get(key.owner_id)
            if dek is None:
                failures.append(
                    f"provider key {key.pk}: its owner's data key is missing or unreadable"
                )
                continue
            try:
                vault.open_sealed(dek, bytes(key.sealed_secret), secret_context(key))
                opened += 1
            except vault.VaultError as error:
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
