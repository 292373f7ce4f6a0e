"""Two-factor authentication: authenticator apps (TOTP) and recovery codes.

SECURITY: TOTP seeds are sealed under the owner's data key (vault.services.OwnerCipher,
purpose "totp_seed", row = device id) and exist in plaintext only while a code is checked
or while the enrolment page shows the QR code. Recovery codes are shown once and stored as
hashes. Nothing here logs a seed or a code.
"""

from __future__ import annotations

import base64
import secrets
from urllib.parse import quote

import segno
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest
from django.views.decorators.debug import sensitive_variables

from accounts.models import (
    SEED_PURPOSE,
    AuditEvent,
    RecoveryCode,
    RecoveryCodeDevice,
    TOTPDevice,
    User,
    hash_recovery_code,
)
from accounts.services import audit_record, operator_audit, sessions_end_others
from vault.services import OwnerCipher

SEED_BYTES = 20
RECOVERY_CODE_COUNT = 10
_CODE_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no look-alikes (0/o, 1/l/i)


@sensitive_variables("seed")
def open_seed(device: TOTPDevice) -> bytes:
    return device.seed()


def has_two_factor(user: User) -> bool:
    return TOTPDevice.objects.filter(user=user, confirmed=True).exists()


def confirmed_totp(user: User) -> TOTPDevice | None:
    return TOTPDevice.objects.filter(user=user, confirmed=True).first()


@sensitive_variables("seed")
def totp_device_start(*, user: User) -> TOTPDevice:
    """The user's unconfirmed authenticator device, created with a fresh sealed seed."""
    device = TOTPDevice.objects.filter(user=user, confirmed=False).first()
    if device is not None:
        return device
    with transaction.atomic():
        device = TOTPDevice.objects.create(user=user, name="Authenticator app", confirmed=False)
        seed = base64.b32encode(secrets.token_bytes(SEED_BYTES)).decode("ascii")
        device.sealed_seed = OwnerCipher(user).seal(SEED_PURPOSE, device.pk, seed)
        device.save(update_fields=["sealed_seed"])
    return device


@sensitive_variables("seed", "uri")
def totp_setup_details(device: TOTPDevice) -> tuple[str, str]:
    """(QR code as inline SVG, the seed in base32 for typing in). Drawn here, no service."""
    seed = base64.b32encode(open_seed(device)).decode("ascii")
    issuer = settings.OTP_TOTP_ISSUER
    label = quote(f"{issuer}:{device.user.email}")
    uri = (
        f"otpauth://totp/{label}?secret={seed}&issuer={quote(issuer)}"
        f"&digits={device.digits}&period={device.step}"
    )
    svg = segno.make(uri, error="m").svg_inline(
        scale=5,
        dark="#111",
        light="#fff",
        border=2,
        omitsize=True,  # viewBox: scales whole
    )
    grouped = " ".join(seed[i : i + 4] for i in range(0, len(seed), 4))
    return svg, grouped


def recovery_codes_create(*, user: User) -> list[str]:
    """Replace the user's recovery codes with ten new ones; return them (shown once)."""
    codes = [
        "-".join("".join(secrets.choice(_CODE_ALPHABET) for _ in range(4)) for _group in range(3))
        for _ in range(RECOVERY_CODE_COUNT)
    ]
    with transaction.atomic():
        RecoveryCodeDevice.objects.filter(user=user).delete()
        device = RecoveryCodeDevice.objects.create(user=user, name="Recovery codes")
        RecoveryCode.objects.bulk_create(
            RecoveryCode(device=device, code_hash=hash_recovery_code(code)) for code in codes
        )
    return codes


def totp_device_confirm(
    *, user: User, device: TOTPDevice, token: str, ip_address: str | None = None
) -> list[str] | None:
    """Turn 2FA on if `token` is right: the device is confirmed, recovery codes made.

    Returns the recovery codes to show once, or None if the code was wrong.
    """
    if not device.verify_token(token):
        return None
    with transaction.atomic():
        TOTPDevice.objects.filter(user=user, confirmed=True).exclude(pk=device.pk).delete()
        device.confirmed = True
        device.save(update_fields=["confirmed"])
        codes = recovery_codes_create(user=user)
        audit_record(
            owner=user,
            actor=user,
            action=AuditEvent.Action.TWO_FACTOR_ENABLED,
            ip_address=ip_address,
        )
    return codes


def _two_factor_remove(*, user: User) -> None:
    TOTPDevice.objects.filter(user=user).delete()
    RecoveryCodeDevice.objects.filter(user=user).delete()


def two_factor_disable(*, user: User, ip_address: str | None = None) -> None:
    """The user turns their own 2FA off (logged as theirs: "turned off")."""
    with transaction.atomic():
        _two_factor_remove(user=user)
        audit_record(
            owner=user,
            actor=user,
            action=AuditEvent.Action.TWO_FACTOR_DISABLED,
            ip_address=ip_address,
        )


def two_factor_reset(*, user: User, request: HttpRequest) -> bool:
    """An operator removes `user`'s 2FA and signs them out everywhere. False if it was off.

    Logged as the operator's ("reset by an operator"), never as the user's own
    `2fa.disabled`.
    """
    if not has_two_factor(user):
        return False
    with transaction.atomic():
        _two_factor_remove(user=user)
        ended = sessions_end_others(user=user, keep_session_key=None)
        operator_audit(
            request,
            owner=user,
            action=AuditEvent.Action.OPERATOR_TWO_FACTOR_RESET,
            details={"sessions": ended},
        )
    return True


def verify_second_factor(user: User, token: str) -> TOTPDevice | RecoveryCodeDevice | None:
    """The device that accepts `token` (an app code, or else a recovery code), or None."""
    token = (token or "").strip()[:64]
    if not token:
        return None
    if token.replace(" ", "").isdigit():
        device = confirmed_totp(user)
        return device if device is not None and device.verify_token(token) else None
    recovery = RecoveryCodeDevice.objects.filter(user=user).first()
    if recovery is not None and recovery.verify_token(token):
        return recovery
    return None
