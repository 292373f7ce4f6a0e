from __future__ import annotations

import sys
import time
from typing import Any

from django.core.management.base import BaseCommand

from vault.crypto import VaultError
from vault.models import DataKey
from vault.services import data_key_rotate, get_keyring


class Command(BaseCommand):
    help = (
        "Rewrap every user's data key under the active (first) master key of BYOK_MASTER_KEYS. "
        "Resumable and safe while the app runs; writes no plaintext anywhere."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--batch-size", type=int, default=500)

    def handle(self, *args: Any, batch_size: int, **options: Any) -> None:
        keyring = get_keyring()
        active = keyring.active_id
        pending = DataKey.objects.exclude(kek_id=active)
        total = pending.count()
        self.stdout.write(f"Active master key: {active}. Data keys to rewrap: {total}.")
        moved = skipped = failed = 0
        started = time.monotonic()
        last_id = 0
        done = 0
        while True:
            batch = list(
                pending.filter(pk__gt=last_id)
                .order_by("pk")
                .values_list("pk", flat=True)[:batch_size]
            )
            if not batch:
                break
            for data_key_id in batch:
                try:
                    if data_key_rotate(data_key_id=data_key_id):
                        moved += 1
                    else:
                        skipped += 1
                except VaultError as error:
                    failed += 1
                    self.stderr.write(f"\ndata key {data_key_id}: {error}")
                except DataKey.DoesNotExist:
                    skipped += 1  # the user was deleted meanwhile
                done += 1
                self._progress(done, total)
            last_id = batch[-1]
        elapsed = time.monotonic() - started
        self.stdout.write("")
        self.stdout.write(
            f"Rewrapped {moved}, already current {skipped}, failed {failed} "
            f"in {elapsed:.1f}s. Still under other master keys: "
            f"{DataKey.objects.exclude(kek_id=active).count()}."
        )
        if failed:
            sys.exit(1)

    def _progress(self, done: int, total: int) -> None:
        if total == 0:
            return
        width = 30
        filled = int(width * done / total)
        self.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}", ending="")
        self.stdout.flush()
