"""The vault's Django side: the configured master keys, each user's data key, and the
`OwnerCipher` every app uses to seal and open that user's values.

This is the one place that seals or opens anything; the crypto itself is `vault.crypto`
(pure). Apps name what they seal with a purpose of their own ("message", "totp_seed",
"provider_key", ...) and the row it belongs to, so a ciphertext copied to another row, user
or purpose fails to open.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Iterable, Mapping

from django.conf import settings
from django.db import IntegrityError, models, transaction
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from vault import crypto
from vault.crypto import VaultError
from vault.models import DataKey

__all__ = [
    "OwnerCipher",
    "VaultError",
    "data_key_delete",
    "data_key_get_or_create",
    "data_key_rotate",
    "get_keyring",
    "owner_cipher_from",
]


@functools.lru_cache(maxsize=4)
def _keyring_from(spec: str) -> crypto.Keyring:
    return crypto.parse_keyring(spec)


def get_keyring() -> crypto.Keyring:
    """The configured master keys (settings.BYOK_MASTER_KEYS), parsed once per value."""
    if not settings.BYOK_MASTER_KEYS:
        raise crypto.KeyringError("BYOK_MASTER_KEYS is not configured.")
    return _keyring_from(settings.BYOK_MASTER_KEYS)


@sensitive_variables()  # hides every local, in this frame and in the vault frames it calls
def data_key_get_or_create(*, owner: models.Model) -> bytes:
    """The owner's DEK in plaintext, creating (and wrapping) it on first need.

    Exactly one DEK per user even when two requests race: the unique owner column settles
    it, and the loser unwraps the winner's key.
    """
    keyring = get_keyring()
    row = DataKey.objects.filter(owner_id=owner.pk).first()
    if row is None:
        dek = crypto.generate_dek()
        try:
            with transaction.atomic():
                row = DataKey.objects.create(
                    owner_id=owner.pk,
                    wrapped=crypto.wrap_dek(keyring, dek, user_id=str(owner.pk)),
                    kek_id=keyring.active_id,
                )
            return dek
        except IntegrityError:
            row = DataKey.objects.get(owner_id=owner.pk)
    return crypto.unwrap_dek(keyring, bytes(row.wrapped), user_id=str(owner.pk))


def data_key_rotate(*, data_key_id: int) -> bool:
    """Rewrap one DEK under the active master key. True if it moved, False if already there.

    The DEK itself does not change, so sealed values and concurrent readers are unaffected;
    the conditional UPDATE makes two rotations at once harmless.
    """
    keyring = get_keyring()
    row = DataKey.objects.get(pk=data_key_id)
    if row.kek_id == keyring.active_id:
        return False
    old_wrapped = bytes(row.wrapped)
    new_wrapped = crypto.rewrap_dek(keyring, old_wrapped, user_id=str(row.owner_id))
    changed = DataKey.objects.filter(pk=row.pk, kek_id=row.kek_id).update(
        wrapped=new_wrapped, kek_id=keyring.active_id, rotated_at=timezone.now()
    )
    return changed == 1


def data_key_delete(*, owner: models.Model) -> None:
    """Crypto-shred the owner: without the DEK nothing sealed for them opens again."""
    DataKey.objects.filter(owner_id=owner.pk).delete()


class OwnerCipher:
    """Seals and opens one user's values with their DEK.

    Unwraps the DEK once, for the many values of one page or one turn. Values are bound to
    `purpose`, `row_id` and any `extra` context (a provider key's provider and base URL), so a
    ciphertext moved to another row, user or endpoint fails to open.
    """

    def __init__(self, owner: models.Model) -> None:
        self.owner_id = str(owner.pk)
        self._dek = data_key_get_or_create(owner=owner)
        self._derived: dict[str, bytes] = {}

    @classmethod
    def from_data_key(cls, row: DataKey) -> OwnerCipher:
        """The cipher of `row`'s owner, unwrapped from the row itself (`vault_check`).
        Raises VaultError when the row does not open under the configured master keys."""
        cipher = cls.__new__(cls)
        cipher.owner_id = str(row.owner_id)
        cipher._dek = crypto.unwrap_dek(get_keyring(), bytes(row.wrapped), user_id=cipher.owner_id)
        cipher._derived = {}
        return cipher

    def blind_tokens(self, purpose: str, values: Iterable[str]) -> list[bytes]:
        """HMAC-SHA256 of each value under this owner's key for `purpose` (derived from the
        DEK, `crypto.derive_key`): equal values give equal tokens for this owner and purpose
        only; without the DEK a token says nothing of its value (a blind index)."""
        key = self._derived.get(purpose)
        if key is None:
            key = crypto.derive_key(self._dek, purpose=purpose, user_id=self.owner_id)
            self._derived[purpose] = key
        return [hmac.digest(key, value.encode("utf-8"), "sha256") for value in values]

    def __repr__(self) -> str:
        return f"OwnerCipher(owner_id={self.owner_id!r})"

    def _context(
        self, purpose: str, row_id: object, extra: Mapping[str, str] | None
    ) -> crypto.SealContext:
        return crypto.SealContext(
            purpose=purpose, user_id=self.owner_id, row_id=str(row_id), extra=extra or {}
        )

    def seal(
        self,
        purpose: str,
        row_id: object,
        text: str,
        *,
        extra: Mapping[str, str] | None = None,
        seal_empty: bool = False,
    ) -> bytes:
        """`text` sealed for this owner. The empty text seals to b"" unless `seal_empty` (a
        provider key of an endpoint without auth is sealed too: b"" means "no key")."""
        if not text and not seal_empty:
            return b""
        return crypto.seal(self._dek, text.encode("utf-8"), self._context(purpose, row_id, extra))

    def open(
        self,
        purpose: str,
        row_id: object,
        sealed: bytes | memoryview,
        *,
        extra: Mapping[str, str] | None = None,
    ) -> str:
        """The text sealed by `seal` with the same purpose, row and extra. Raises VaultError."""
        data = bytes(sealed)
        if not data:
            return ""
        context = self._context(purpose, row_id, extra)
        return crypto.open_sealed(self._dek, data, context).decode("utf-8")


def owner_cipher_from(row: DataKey | None) -> OwnerCipher | None:
    """The cipher of a data key row read with its owner (no query of its own): None when
    the owner has none yet (nothing was ever sealed for them) or it does not open."""
    if row is None:
        return None
    try:
        return OwnerCipher.from_data_key(row)
    except VaultError:
        return None
