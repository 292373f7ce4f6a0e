from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from accounts.models import AuditEvent
from keys import services
from keys.models import ProviderKey
from keys.services import KeyVaultError, RequestInfo
from tests.keys_helpers import GOOD_SECRET, add_key, wait_for_status
from vault import crypto as vault
from vault.models import DataKey
from vault.services import data_key_get_or_create

pytestmark = pytest.mark.django_db

Status = ProviderKey.Status


def test_a_new_key_is_sealed_fingerprinted_and_audited(
    alice, fake_provider, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        key = add_key(alice, fake_provider)
    assert len(callbacks) == 1  # the verification task, queued on commit
    key.refresh_from_db()
    assert key.status == Status.CHECKING
    assert key.fingerprint == "sk-…WXYZ"
    assert GOOD_SECRET.encode() not in bytes(key.sealed_secret)
    assert services.provider_key_open(key) == GOOD_SECRET
    event = AuditEvent.objects.get(owner=alice, action="key.created")
    assert event.target_id == str(key.pk)
    assert event.ip_address == "127.0.0.1"
    assert GOOD_SECRET not in str(event.details)


def test_it_creates_exactly_one_data_key_per_user(alice):
    first = data_key_get_or_create(owner=alice)
    assert data_key_get_or_create(owner=alice) == first
    assert DataKey.objects.filter(owner=alice).count() == 1


@pytest.mark.django_db(transaction=True)
def test_racing_requests_still_create_one_data_key(alice):
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers; the race needs concurrent transactions")
    results: list[bytes] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        results.append(data_key_get_or_create(owner=alice))
        connection.close()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert DataKey.objects.filter(owner=alice).count() == 1
    assert len(set(results)) == 1


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("", "Paste your OpenAI API key"),
        ("   ", "Paste your OpenAI API key"),
        ("sk-abc\ndef-more-characters", "spaces or line breaks"),
        ("sk-abc def", "spaces or line breaks"),
        ("sk-" + "a" * 4100, "over 4 KB"),
        ("sk-ünïcode-key-value", "characters API keys never have"),
    ],
)
def test_it_rejects_a_bad_secret_and_saves_nothing(alice, secret, message):
    with pytest.raises(KeyVaultError, match=message) as error:
        services.provider_key_create(
            owner=alice,
            preset_slug="openai",
            label="",
            secret=secret,
            info=RequestInfo(actor=alice),
        )
    assert error.value.field == "secret"
    assert not ProviderKey.objects.exists()
    assert not AuditEvent.objects.exists()


@pytest.mark.parametrize(
    ("base_url", "message"),
    [
        ("api.example.com/v1", "Start the URL with https://"),
        ("https://user:pw@api.example.com/v1", "credentials|password|user"),
        ("https://api.example.com/v1#frag", "fragment"),
        ("ftp://api.example.com/v1", "http"),
    ],
)
def test_it_rejects_a_bad_base_url(alice, base_url, message):
    with pytest.raises(KeyVaultError, match=f"(?i){message}") as error:
        services.provider_key_create(
            owner=alice,
            preset_slug="custom",
            label="",
            secret="sk-x-123456789012",
            base_url=base_url,
            info=RequestInfo(actor=alice),
        )
    assert error.value.field == "base_url"
    assert not ProviderKey.objects.exists()


def test_it_refuses_a_private_base_url_when_private_endpoints_are_off(alice, settings):
    settings.BYOK_ALLOW_PRIVATE_ENDPOINTS = False
    for url in ("https://169.254.169.254/v1", "https://10.0.0.5/v1", "https://localhost/v1"):
        with pytest.raises(KeyVaultError) as error:
            services.provider_key_create(
                owner=alice,
                preset_slug="custom",
                label="",
                secret="sk-x-123456789012",
                base_url=url,
                info=RequestInfo(actor=alice),
            )
        assert error.value.field == "base_url"
    assert not ProviderKey.objects.exists()


def test_a_fixed_preset_cannot_be_pointed_elsewhere(alice):
    with pytest.raises(KeyVaultError, match="Custom") as error:
        services.provider_key_create(
            owner=alice,
            preset_slug="openai",
            label="",
            secret="sk-x-123456789012",
            base_url="https://evil.example/v1",
            info=RequestInfo(actor=alice),
        )
    assert error.value.field == "base_url"


def test_it_rejects_an_expiry_in_the_past(alice, fake_provider):
    with pytest.raises(KeyVaultError, match="future") as error:
        add_key(alice, fake_provider, expires_on=timezone.localdate() - timedelta(days=1))
    assert error.value.field == "expires_on"
    assert not ProviderKey.objects.exists()


def test_labels_are_unique_per_owner_regardless_of_case(alice, bob, fake_provider):
    add_key(alice, fake_provider, label="Work")
    with pytest.raises(KeyVaultError, match="already have a key with this label"):
        add_key(alice, fake_provider, label="work")
    add_key(bob, fake_provider, label="Work")  # another user may use the same label
    assert ProviderKey.objects.count() == 2


def test_an_empty_label_gets_a_unique_default(alice, fake_provider):
    first = add_key(alice, fake_provider, label="")
    second = add_key(alice, fake_provider, label="")
    assert first.label == "Custom OpenAI-compatible"
    assert second.label == "Custom OpenAI-compatible 2"


def test_a_ciphertext_copied_to_another_users_row_fails_to_open(alice, bob, fake_provider):
    alices = add_key(alice, fake_provider, label="A")
    bobs = add_key(bob, fake_provider, label="B", secret="sk-bobs-own-key-000000")
    ProviderKey.objects.filter(pk=bobs.pk).update(sealed_secret=alices.sealed_secret)
    bobs.refresh_from_db()
    with pytest.raises(vault.VaultError):
        services.provider_key_open(bobs)


def test_a_ciphertext_copied_to_another_row_of_the_same_user_fails(alice, fake_provider):
    one = add_key(alice, fake_provider, label="One")
    two = add_key(alice, fake_provider, label="Two", secret="sk-second-key-000000000")
    ProviderKey.objects.filter(pk=two.pk).update(sealed_secret=one.sealed_secret)
    two.refresh_from_db()
    with pytest.raises(vault.VaultError):
        services.provider_key_open(two)


def test_a_base_url_changed_in_the_database_makes_the_key_fail_to_open(alice, fake_provider):
    key = add_key(alice, fake_provider)
    ProviderKey.objects.filter(pk=key.pk).update(base_url="https://attacker.example/v1")
    key.refresh_from_db()
    with pytest.raises(vault.VaultError, match="another row, user or endpoint"):
        services.provider_key_open(key)


def test_a_preset_changed_in_the_database_makes_the_key_fail_to_open(alice, fake_provider):
    key = add_key(alice, fake_provider)
    ProviderKey.objects.filter(pk=key.pk).update(preset="openai")
    key.refresh_from_db()
    with pytest.raises(vault.VaultError):
        services.provider_key_open(key)


def test_replacing_the_secret_keeps_the_id_and_records_history(alice, fake_provider):
    key = add_key(alice, fake_provider)
    new_secret = "sk-replaced-secret-value-9876"
    replaced = services.provider_key_replace_secret(
        key=key, secret=new_secret, info=RequestInfo(actor=alice)
    )
    assert replaced.pk == key.pk
    assert replaced.secret_version == 2
    assert replaced.fingerprint == "sk-…9876"
    assert services.provider_key_open(replaced) == new_secret
    event = AuditEvent.objects.get(action="key.replaced")
    assert event.details == {"from": "sk-…WXYZ", "to": "sk-…9876", "version": 2}


def test_revoking_erases_the_secret_and_keeps_the_history(alice, fake_provider):
    key = add_key(alice, fake_provider)
    services.provider_key_revoke(key=key, info=RequestInfo(actor=alice))
    key.refresh_from_db()
    assert key.status == Status.REVOKED
    assert bytes(key.sealed_secret) == b""
    with pytest.raises(vault.VaultError, match="revoked"):
        services.provider_key_open(key)
    with pytest.raises(KeyVaultError):
        services.provider_key_replace_secret(
            key=key, secret="sk-new-123456789", info=RequestInfo(actor=alice)
        )
    assert list(AuditEvent.objects.values_list("action", flat=True).order_by("id")) == [
        "key.created",
        "key.revoked",
    ]


def test_moving_a_key_reorders_only_that_providers_keys(alice, fake_provider):
    a = add_key(alice, fake_provider, label="A")
    b = add_key(alice, fake_provider, label="B")
    c = add_key(alice, fake_provider, label="C")
    services.provider_key_move(key=c, direction="up", info=RequestInfo(actor=alice))
    order = list(
        ProviderKey.objects.for_owner(alice).order_by("priority").values_list("label", flat=True)
    )
    assert order == ["A", "C", "B"]
    services.provider_key_move(
        key=a, direction="up", info=RequestInfo(actor=alice)
    )  # already first
    assert ProviderKey.objects.get(pk=a.pk).priority == 0
    assert ProviderKey.objects.get(pk=b.pk).priority == 2


def test_a_valid_key_is_verified_by_a_real_worker(alice, fake_provider, celery_worker):
    fake_provider.accept_only_keys(GOOD_SECRET)
    key = wait_for_status(add_key(alice, fake_provider))
    assert key.status == Status.VALID, key.status_reason
    assert key.last_verified_at is not None
    received = {request.api_key for request in fake_provider.requests}
    assert received == {GOOD_SECRET}
    assert AuditEvent.objects.filter(action="key.verified", details__result="valid").exists()


def test_a_rejected_key_is_marked_invalid_with_a_reason(alice, fake_provider, celery_worker):
    fake_provider.accept_only_keys("sk-something-else")
    key = wait_for_status(add_key(alice, fake_provider))
    assert key.status == Status.INVALID
    assert "rejected this key" in key.status_reason


def test_a_key_without_credit_is_marked_so(alice, fake_provider):
    fake_provider.script(error="no_credit")
    key = add_key(alice, fake_provider)
    services.provider_key_verify(key_id=str(key.pk))
    key.refresh_from_db()
    assert key.status == Status.NO_CREDIT


@pytest.mark.parametrize("error", [{"status": 503}, {"status": 429, "retry_after": 3}])
def test_a_provider_that_is_down_leaves_the_key_unverified_not_invalid(alice, fake_provider, error):
    fake_provider.script(**error)
    key = add_key(alice, fake_provider)
    services.provider_key_verify(key_id=str(key.pk))
    key.refresh_from_db()
    assert key.status == Status.UNVERIFIED
    assert "check it again" in key.status_reason
    assert GOOD_SECRET not in key.status_reason


def test_a_dead_endpoint_leaves_the_key_unverified(alice):
    key = add_key(alice, None, base_url="http://127.0.0.1:9/v1")
    services.provider_key_verify(key_id=str(key.pk))
    key.refresh_from_db()
    assert key.status == Status.UNVERIFIED
    assert key.status_reason


def test_verifying_a_revoked_or_deleted_key_does_nothing(alice, fake_provider):
    key = add_key(alice, fake_provider)
    services.provider_key_revoke(key=key, info=RequestInfo(actor=alice))
    assert services.provider_key_verify(key_id=str(key.pk)) is None
    assert services.provider_key_verify(key_id="00000000-0000-0000-0000-000000000000") is None
    assert fake_provider.requests == []


def test_the_beat_job_expires_keys_and_rechecks_old_ones(alice, fake_provider, celery_worker):
    expiring = add_key(alice, fake_provider, label="Old")
    stale = add_key(alice, fake_provider, label="Stale")
    # The first checks run on the worker; one that loaded the key after its expiry date was
    # set would mark it expired itself, and the beat job would have nothing left to expire.
    wait_for_status(expiring)
    wait_for_status(stale)
    ProviderKey.objects.filter(pk=expiring.pk).update(expires_on=timezone.localdate())
    ProviderKey.objects.filter(pk=stale.pk).update(
        status=Status.VALID, last_verified_at=timezone.now() - timedelta(days=3)
    )
    from keys.tasks import recheck_provider_keys

    recheck_provider_keys()
    expiring.refresh_from_db()
    assert expiring.status == Status.EXPIRED
    deadline = timezone.now() + timedelta(seconds=15)
    while timezone.now() < deadline:
        stale.refresh_from_db()
        if stale.last_verified_at > timezone.now() - timedelta(minutes=1):
            break
        time.sleep(0.05)
    assert stale.last_verified_at > timezone.now() - timedelta(minutes=1)
    assert stale.status == Status.VALID
    assert AuditEvent.objects.filter(action="key.expired", target_id=str(expiring.pk)).exists()


def test_uses_are_counted_per_day_in_one_row(alice, fake_provider):
    key = add_key(alice, fake_provider)
    for _ in range(3):
        services.provider_key_mark_used(key=key)
    event = AuditEvent.objects.get(action="key.used")
    assert event.count == 3
    key.refresh_from_db()
    assert key.last_used_at is not None


# --- master-key rotation -----------------------------------------------------------------


def _ring(settings, spec):
    settings.BYOK_MASTER_KEYS = spec


def test_rotation_moves_every_dek_and_the_old_id_can_then_be_retired(
    alice, bob, fake_provider, settings, capsys
):
    old = "old:" + vault.generate_master_key()
    new = "new:" + vault.generate_master_key()
    _ring(settings, old)
    a = add_key(alice, fake_provider, secret="sk-alice-secret-000001")
    b = add_key(bob, fake_provider, secret="sk-bob-secret-00000002")
    assert set(DataKey.objects.values_list("kek_id", flat=True)) == {"old"}

    _ring(settings, f"{new},{old}")
    assert services.provider_key_open(a) == "sk-alice-secret-000001"  # old values still open
    call_command("rotate_master_key")
    output = capsys.readouterr().out
    assert "Rewrapped 2, already current 0, failed 0" in output
    assert set(DataKey.objects.values_list("kek_id", flat=True)) == {"new"}

    call_command("rotate_master_key")  # resumable: a second run has nothing to do
    assert "Data keys to rewrap: 0" in capsys.readouterr().out

    _ring(settings, new)  # retire the old id: everything still opens
    assert services.provider_key_open(a) == "sk-alice-secret-000001"
    assert services.provider_key_open(b) == "sk-bob-secret-00000002"
    call_command("vault_check")
    assert "Every sealed value opens" in capsys.readouterr().out


def test_retiring_a_master_key_before_rotation_fails_clearly(
    alice, fake_provider, settings, capsys
):
    old = "old:" + vault.generate_master_key()
    _ring(settings, old)
    key = add_key(alice, fake_provider)
    _ring(settings, "new:" + vault.generate_master_key())
    with pytest.raises(vault.VaultError, match="master key 'old', which is not configured"):
        services.provider_key_open(key)
    with pytest.raises(SystemExit) as exit_info:
        call_command("vault_check")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert f"data key {DataKey.objects.get().pk}" in err
    assert GOOD_SECRET not in err


def test_vault_check_lists_a_tampered_value_by_id_without_content(alice, fake_provider, capsys):
    key = add_key(alice, fake_provider)
    sealed = bytearray(bytes(key.sealed_secret))
    sealed[-1] ^= 1
    ProviderKey.objects.filter(pk=key.pk).update(sealed_secret=bytes(sealed))
    with pytest.raises(SystemExit):
        call_command("vault_check")
    err = capsys.readouterr().err
    assert f"provider key {key.pk}" in err
    assert GOOD_SECRET not in err
