"""Envelope encryption for the key vault. Pure: bytes in, bytes out; no ORM, no settings.

Three layers (ARCHITECTURE §4):

* **Master keys (KEKs)**: a `Keyring` of 32-byte AES keys with ids, parsed from
  `id:base64key,...`. The first key encrypts; every key decrypts. Independent of SECRET_KEY.
* **Data keys (DEKs)**: one random 256-bit key per user, wrapped under the active KEK with
  AES-256-GCM. AAD names the purpose, the user and the KEK id.
* **Sealed values**: AES-256-GCM under the user's DEK with a random 96-bit nonce. The AAD binds
  the value to where it belongs (purpose, user, row, and whatever else the caller names, such
  as a provider key's provider and canonical base URL), so a ciphertext copied anywhere else
  fails to open.

Formats (all integers big-endian):

    wrapped DEK  = 0x01 | len(kek_id):u8 | kek_id | nonce:12 | AESGCM(dek):48
    sealed value = 0x01 | nonce:12 | AESGCM(plaintext)

Everything fails closed: an unknown version, an unknown KEK id, truncation or any flipped bit
raises `VaultError`, whose message never contains key material or plaintext.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
WRAP_VERSION = 1
SEAL_VERSION = 1
_KEK_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class VaultError(Exception):
    """A value could not be sealed or opened. The message never holds secret material."""


class KeyringError(VaultError):
    """The master-key configuration is malformed."""


@dataclass(frozen=True, slots=True)
class Keyring:
    """Master keys by id. `active_id` encrypts; all of `keys` decrypt."""

    keys: Mapping[str, bytes] = field(repr=False)
    active_id: str

    def __post_init__(self) -> None:
        if self.active_id not in self.keys:
            raise KeyringError(
                f"The active master key id {self.active_id!r} is not in the keyring."
            )
        for key_id, key in self.keys.items():
            if not _KEK_ID.match(key_id):
                raise KeyringError(
                    f"Master key id {key_id!r} is invalid: use 1-64 letters, digits, '.', '_' "
                    "or '-'."
                )
            if len(key) != KEY_BYTES:
                raise KeyringError(
                    f"Master key {key_id!r} is {len(key)} bytes; it must be {KEY_BYTES}."
                )

    @property
    def ids(self) -> list[str]:
        return list(self.keys)

    def __repr__(self) -> str:
        return f"Keyring(ids={self.ids!r}, active_id={self.active_id!r})"


def generate_master_key() -> str:
    """A new master key, base64-encoded, for `id:<this>` in BYOK_MASTER_KEYS."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode("ascii")


def parse_keyring(spec: str) -> Keyring:
    """Parse `id1:base64key,id2:base64key` (newlines also separate entries).

    The first entry is the active key. Raises `KeyringError` naming what is wrong (never the
    key bytes): an empty spec, an entry without an id, a duplicate id, bad base64, a key that
    is not 32 bytes.
    """
    entries = [part.strip() for part in re.split(r"[,\n]", spec) if part.strip()]
    if not entries:
        raise KeyringError("No master keys given: expected 'id:base64key[,id:base64key...]'.")
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(entries, start=1):
        key_id, separator, encoded = entry.partition(":")
        key_id = key_id.strip()
        if not separator or not key_id or not encoded.strip():
            raise KeyringError(f"Master key entry {position} is not of the form 'id:base64key'.")
        if key_id in keys:
            raise KeyringError(f"Master key id {key_id!r} appears twice.")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise KeyringError(f"Master key {key_id!r} is not valid base64.") from None
        keys[key_id] = key
    return Keyring(keys=keys, active_id=next(iter(keys)))


def _dek_aad(user_id: str, kek_id: str) -> bytes:
    return _encode_fields({"purpose": "dek", "user": user_id, "kek": kek_id})


def generate_dek() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def wrap_dek(keyring: Keyring, dek: bytes, *, user_id: str) -> bytes:
    """Encrypt a user's DEK under the keyring's active master key."""
    if len(dek) != KEY_BYTES:
        raise VaultError("A data key must be 32 bytes.")
    kek_id = keyring.active_id
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(keyring.keys[kek_id]).encrypt(nonce, dek, _dek_aad(user_id, kek_id))
    encoded_id = kek_id.encode("ascii")
    return bytes([WRAP_VERSION, len(encoded_id)]) + encoded_id + nonce + ciphertext


def wrapped_kek_id(wrapped: bytes) -> str:
    """The id of the master key a wrapped DEK is under, read from its header."""
    if len(wrapped) < 2 or wrapped[0] != WRAP_VERSION:
        raise VaultError("Unknown wrapped data key format.")
    length = wrapped[1]
    if len(wrapped) != 2 + length + NONCE_BYTES + KEY_BYTES + TAG_BYTES:
        raise VaultError("The wrapped data key is truncated or padded.")
    try:
        return wrapped[2 : 2 + length].decode("ascii")
    except UnicodeDecodeError:
        raise VaultError("The wrapped data key header is corrupt.") from None


def unwrap_dek(keyring: Keyring, wrapped: bytes, *, user_id: str) -> bytes:
    """Decrypt a wrapped DEK. Fails closed on any tampering or an unknown master key id."""
    kek_id = wrapped_kek_id(wrapped)
    kek = keyring.keys.get(kek_id)
    if kek is None:
        raise VaultError(
            f"The data key is wrapped under master key {kek_id!r}, which is not configured: "
            "add it back to BYOK_MASTER_KEYS (or rotate before removing it)."
        )
    body = wrapped[2 + len(kek_id) :]
    nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
    try:
        return AESGCM(kek).decrypt(nonce, ciphertext, _dek_aad(user_id, kek_id))
    except InvalidTag:
        raise VaultError("The data key failed its integrity check.") from None


def rewrap_dek(keyring: Keyring, wrapped: bytes, *, user_id: str) -> bytes:
    """Re-encrypt a wrapped DEK under the active master key (for rotation)."""
    return wrap_dek(keyring, unwrap_dek(keyring, wrapped, user_id=user_id), user_id=user_id)


def _encode_fields(fields: Mapping[str, str]) -> bytes:
    """Unambiguous encoding of the AAD fields: sorted, each name and value length-prefixed."""
    out = bytearray(b"byok-aad-v1")
    for name in sorted(fields):
        for part in (name.encode("utf-8"), fields[name].encode("utf-8")):
            out += len(part).to_bytes(4, "big") + part
    return bytes(out)


@dataclass(frozen=True, slots=True)
class SealContext:
    """Where a sealed value belongs. Every field is bound into the AAD.

    `purpose` names the kind of value ("provider_key", "message", ...); `user_id` and `row_id`
    its owner and row; `extra` anything else it must stay attached to (for provider keys: the
    provider and the canonical base URL).
    """

    purpose: str
    user_id: str
    row_id: str
    extra: Mapping[str, str] = field(default_factory=dict)

    def aad(self, version: int) -> bytes:
        reserved = {"version", "purpose", "user", "row"} & set(self.extra)
        if reserved:
            raise VaultError(f"Context fields {sorted(reserved)} are reserved.")
        return _encode_fields(
            {
                **self.extra,
                "version": str(version),
                "purpose": self.purpose,
                "user": self.user_id,
                "row": self.row_id,
            }
        )


def seal(dek: bytes, plaintext: bytes, context: SealContext) -> bytes:
    """Encrypt `plaintext` under `dek`, bound to `context`."""
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(dek).encrypt(nonce, plaintext, context.aad(SEAL_VERSION))
    return bytes([SEAL_VERSION]) + nonce + ciphertext


def open_sealed(dek: bytes, sealed: bytes, context: SealContext) -> bytes:
    """Decrypt a sealed value. Fails closed unless `context` is exactly the sealing one."""
    if not sealed or sealed[0] != SEAL_VERSION:
        raise VaultError("Unknown sealed value format.")
    if len(sealed) < 1 + NONCE_BYTES + TAG_BYTES:
        raise VaultError("The sealed value is truncated.")
    nonce, ciphertext = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return AESGCM(dek).decrypt(nonce, ciphertext, context.aad(SEAL_VERSION))
    except InvalidTag:
        raise VaultError(
            "The sealed value failed its integrity check: it was altered, or it belongs to "
            "another row, user or endpoint."
        ) from None


def derive_key(dek: bytes, *, purpose: str, user_id: str) -> bytes:
    """A 256-bit key for `purpose` derived from a DEK (HKDF-SHA256), for keyed digests
    (blind index tokens): independent of the DEK's sealing use and of every other purpose,
    and gone with the DEK."""
    info = _encode_fields({"kind": "derived-key-v1", "purpose": purpose, "user": user_id})
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(dek)
