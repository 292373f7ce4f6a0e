"""keys/vault.py, tested the way Tink tests its envelope AEAD."""

from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vault import crypto as vault
from vault.crypto import Keyring, KeyringError, SealContext, VaultError

K1 = os.urandom(32)
K2 = os.urandom(32)


def ring(*entries: tuple[str, bytes]) -> Keyring:
    return vault.parse_keyring(",".join(f"{i}:{base64.b64encode(k).decode()}" for i, k in entries))


def key_context(**changes: str) -> SealContext:
    fields = {
        "user_id": "7",
        "row_id": "row-1",
        "provider": "openai",
        "base_url": "https://api.openai.com/v1",
    }
    fields.update(changes)
    return SealContext(
        purpose=fields.pop("purpose", "provider_key"),
        user_id=fields.pop("user_id"),
        row_id=fields.pop("row_id"),
        extra=fields,
    )


# --- keyring ---------------------------------------------------------------------------


def test_the_first_master_key_is_active_and_all_are_kept():
    keyring = ring(("new", K2), ("old", K1))
    assert keyring.active_id == "new"
    assert keyring.ids == ["new", "old"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "No master keys"),
        ("   ,  ", "No master keys"),
        ("nocolon", "not of the form"),
        (":" + base64.b64encode(K1).decode(), "not of the form"),
        ("a:not base64!!", "not valid base64"),
        ("a:" + base64.b64encode(b"short").decode(), "must be 32"),
        (f"a:{base64.b64encode(K1).decode()},a:{base64.b64encode(K2).decode()}", "appears twice"),
        ("bad id:" + base64.b64encode(K1).decode(), "is invalid"),
    ],
)
def test_it_rejects_a_malformed_keyring(spec, message):
    with pytest.raises(KeyringError, match=message):
        vault.parse_keyring(spec)


def test_keyring_errors_and_repr_never_show_key_bytes():
    encoded = base64.b64encode(K1[:31]).decode()
    with pytest.raises(KeyringError) as error:
        vault.parse_keyring(f"a:{encoded}")
    assert encoded not in str(error.value)
    assert base64.b64encode(K1).decode() not in repr(ring(("a", K1)))
    assert repr(K1) not in repr(ring(("a", K1)))


def test_generated_master_keys_parse():
    assert len(vault.parse_keyring("x:" + vault.generate_master_key()).keys["x"]) == 32


# --- data keys -------------------------------------------------------------------------


def test_a_wrapped_dek_round_trips_and_names_its_master_key():
    keyring = ring(("k1", K1))
    dek = vault.generate_dek()
    wrapped = vault.wrap_dek(keyring, dek, user_id="7")
    assert vault.wrapped_kek_id(wrapped) == "k1"
    assert vault.unwrap_dek(keyring, wrapped, user_id="7") == dek
    assert dek not in wrapped


def test_a_wrapped_dek_is_bound_to_its_user():
    keyring = ring(("k1", K1))
    wrapped = vault.wrap_dek(keyring, vault.generate_dek(), user_id="7")
    with pytest.raises(VaultError, match="integrity"):
        vault.unwrap_dek(keyring, wrapped, user_id="8")


def test_any_flipped_bit_in_a_wrapped_dek_fails():
    keyring = ring(("k1", K1))
    wrapped = vault.wrap_dek(keyring, vault.generate_dek(), user_id="7")
    for index in range(len(wrapped)):
        for bit in (0, 7):
            tampered = bytearray(wrapped)
            tampered[index] ^= 1 << bit
            with pytest.raises(VaultError):
                vault.unwrap_dek(keyring, bytes(tampered), user_id="7")


def test_a_truncated_or_padded_wrapped_dek_fails():
    keyring = ring(("k1", K1))
    wrapped = vault.wrap_dek(keyring, vault.generate_dek(), user_id="7")
    for cut in range(len(wrapped)):
        with pytest.raises(VaultError):
            vault.unwrap_dek(keyring, wrapped[:cut], user_id="7")
    with pytest.raises(VaultError):
        vault.unwrap_dek(keyring, wrapped + b"\0", user_id="7")


def test_a_bogus_wrap_version_fails():
    keyring = ring(("k1", K1))
    wrapped = vault.wrap_dek(keyring, vault.generate_dek(), user_id="7")
    with pytest.raises(VaultError, match="Unknown"):
        vault.unwrap_dek(keyring, b"\x02" + wrapped[1:], user_id="7")


def test_old_deks_open_after_a_new_master_key_is_added():
    old = vault.wrap_dek(ring(("k1", K1)), dek := vault.generate_dek(), user_id="7")
    assert vault.unwrap_dek(ring(("k2", K2), ("k1", K1)), old, user_id="7") == dek


def test_rotation_moves_the_dek_to_the_active_key_and_the_old_id_can_then_go():
    both = ring(("k2", K2), ("k1", K1))
    dek = vault.generate_dek()
    old = vault.wrap_dek(ring(("k1", K1)), dek, user_id="7")
    rotated = vault.rewrap_dek(both, old, user_id="7")
    assert vault.wrapped_kek_id(rotated) == "k2"
    assert vault.unwrap_dek(ring(("k2", K2)), rotated, user_id="7") == dek


def test_retiring_a_master_key_before_rotation_fails_with_a_clear_error():
    old = vault.wrap_dek(ring(("k1", K1)), vault.generate_dek(), user_id="7")
    with pytest.raises(VaultError, match="master key 'k1', which is not configured"):
        vault.unwrap_dek(ring(("k2", K2)), old, user_id="7")


def test_a_master_key_id_cannot_be_swapped_in_the_header():
    both = ring(("k2", K2), ("k1", K1))
    wrapped = vault.wrap_dek(ring(("k1", K1)), vault.generate_dek(), user_id="7")
    swapped = wrapped[:2] + b"k2" + wrapped[4:]
    with pytest.raises(VaultError):
        vault.unwrap_dek(both, swapped, user_id="7")


# --- sealed values ---------------------------------------------------------------------


@given(st.binary(max_size=4096))
def test_a_sealed_value_round_trips(plaintext):
    dek = vault.generate_dek()
    assert vault.open_sealed(dek, vault.seal(dek, plaintext, key_context()), key_context()) == (
        plaintext
    )


def test_sealing_twice_gives_different_ciphertexts():
    dek = vault.generate_dek()
    assert vault.seal(dek, b"sk-x", key_context()) != vault.seal(dek, b"sk-x", key_context())


@pytest.mark.parametrize(
    "wrong",
    [
        {"user_id": "8"},
        {"row_id": "row-2"},
        {"provider": "anthropic"},
        {"base_url": "https://evil.example/v1"},
        {"purpose": "message"},
    ],
    ids=["other-user", "other-row", "other-provider", "other-base-url", "other-purpose"],
)
def test_a_sealed_value_fails_to_open_in_another_context(wrong):
    dek = vault.generate_dek()
    sealed = vault.seal(dek, b"sk-secret", key_context())
    with pytest.raises(VaultError, match="another row, user or endpoint"):
        vault.open_sealed(dek, sealed, key_context(**wrong))


def test_a_sealed_value_fails_under_another_users_dek():
    sealed = vault.seal(vault.generate_dek(), b"sk-secret", key_context())
    with pytest.raises(VaultError):
        vault.open_sealed(vault.generate_dek(), sealed, key_context())


def test_an_added_or_missing_context_field_fails():
    dek = vault.generate_dek()
    sealed = vault.seal(dek, b"v", key_context())
    bare = SealContext(
        purpose="provider_key", user_id="7", row_id="row-1", extra={"provider": "openai"}
    )
    with pytest.raises(VaultError):
        vault.open_sealed(dek, sealed, bare)


def test_ambiguous_field_boundaries_do_not_collide():
    dek = vault.generate_dek()
    a = SealContext(purpose="p", user_id="1", row_id="2", extra={"x": "ab", "y": "c"})
    b = SealContext(purpose="p", user_id="1", row_id="2", extra={"x": "a", "y": "bc"})
    with pytest.raises(VaultError):
        vault.open_sealed(dek, vault.seal(dek, b"v", a), b)


def test_any_flipped_bit_in_a_sealed_value_fails():
    dek = vault.generate_dek()
    sealed = vault.seal(dek, b"sk-secret-value", key_context())
    for index in range(len(sealed)):
        tampered = bytearray(sealed)
        tampered[index] ^= 0x01
        with pytest.raises(VaultError):
            vault.open_sealed(dek, bytes(tampered), key_context())


def test_truncated_sealed_values_and_bogus_versions_fail():
    dek = vault.generate_dek()
    sealed = vault.seal(dek, b"sk-secret-value", key_context())
    for cut in range(len(sealed)):
        with pytest.raises(VaultError):
            vault.open_sealed(dek, sealed[:cut], key_context())
    for version in (0, 2, 255):
        with pytest.raises(VaultError, match="Unknown"):
            vault.open_sealed(dek, bytes([version]) + sealed[1:], key_context())


def test_vault_errors_never_hold_the_plaintext():
    dek = vault.generate_dek()
    sealed = vault.seal(dek, b"sk-canary-123", key_context())
    with pytest.raises(VaultError) as error:
        vault.open_sealed(dek, sealed, key_context(user_id="9"))
    assert "canary" not in str(error.value)
    assert "canary" not in repr(error.value)
