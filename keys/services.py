"""Writes and worker-side reads of the key vault.

Plaintext provider keys exist in two places only: the web request that saves one (sealed
before the request ends) and `provider_key_open`, which a worker calls for one provider
call. Everything else sees the fingerprint.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables
from redis import RedisError

from accounts.models import AuditEvent, User
from accounts.services import audit_count_use, audit_record
from core.redis import get_redis
from keys.models import ProviderKey
from providers.catalog import Preset, build_adapter, get_preset, resolve_base_url
from providers.connections import ConnectionConfig
from providers.errors import InvalidEndpoint, ProviderError, ProviderErrorKind
from providers.netguard import check_endpoint, system_resolver
from providers.types import ChatAdapter
from vault.services import OwnerCipher, VaultError

logger = logging.getLogger(__name__)

MAX_SECRET_BYTES = 4096
Status = ProviderKey.Status
Action = AuditEvent.Action


class KeyVaultError(Exception):
    """An expected failure with a user-readable message, optionally tied to a form field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# --- configuration -----------------------------------------------------------------------


def connection_config() -> ConnectionConfig:
    """How provider calls connect, from settings."""
    return ConnectionConfig(
        allow_private_endpoints=settings.BYOK_ALLOW_PRIVATE_ENDPOINTS,
        connect_timeout=settings.BYOK_PROVIDER_CONNECT_TIMEOUT,
        read_timeout=settings.BYOK_PROVIDER_READ_TIMEOUT,
        call_deadline=settings.BYOK_PROVIDER_CALL_DEADLINE,
        max_connections=settings.BYOK_PROVIDER_MAX_CONNECTIONS,
    )


# --- sealing -----------------------------------------------------------------------------

KEY_PURPOSE = "provider_key"


def _secret_binding(key: ProviderKey) -> dict[str, str]:
    """What a provider key's ciphertext is bound to besides its owner and row: the provider
    and the canonical base URL, so a sealed key never opens for another server."""
    return {"provider": key.preset, "base_url": key.base_url}


def fingerprint_of(secret: str) -> str:
    """A recognisable, non-secret stand-in such as `sk-…a1b2`."""
    if not secret:
        return "no key"
    if len(secret) < 12:
        return "…" + secret[-2:]
    prefix_match = re.match(r"^([A-Za-z]{2,4}[-_])", secret)
    prefix = prefix_match.group(1) if prefix_match else ""
    return f"{prefix}…{secret[-4:]}"


@sensitive_variables("secret")
def clean_secret(secret: str, *, preset: Preset) -> str:
    """Validate a pasted key; raises KeyVaultError(field="secret") with a clear message."""
    secret = secret.strip()
    if not secret:
        if preset.key_required:
            raise KeyVaultError(f"Paste your {preset.name} API key.", field="secret")
        return ""
    if any(character.isspace() for character in secret):
        raise KeyVaultError(
            "The key contains spaces or line breaks. Copy it again, in one piece.",
            field="secret",
        )
    if len(secret.encode("utf-8")) > MAX_SECRET_BYTES:
        raise KeyVaultError("That is too long to be an API key (over 4 KB).", field="secret")
    if not secret.isprintable() or not secret.isascii():
        raise KeyVaultError(
            "The key contains characters API keys never have. Copy it again.", field="secret"
        )
    return secret


def clean_base_url(preset: Preset, base_url: str | None) -> str:
    """The canonical base URL for a new key, checked by the network guard (with DNS)."""
    try:
        canonical = resolve_base_url(preset, base_url)
        if preset.base_url_editable or preset.local:
            check_endpoint(
                canonical,
                allow_private_endpoints=settings.BYOK_ALLOW_PRIVATE_ENDPOINTS,
                resolver=system_resolver,
            )
    except InvalidEndpoint as error:
        raise KeyVaultError(error.user_message, field="base_url") from None
    return canonical


@sensitive_variables("secret")
def _seal_secret(key: ProviderKey, secret: str) -> None:
    try:
        cipher = OwnerCipher(key.owner)
    except VaultError:
        logger.error("the data key of user %s could not be opened", key.owner_id)
        raise KeyVaultError(
            "Your key vault could not be opened, so nothing was saved. Please contact the "
            "operator of this BYOK instance."
        ) from None
    key.sealed_secret = cipher.seal(
        KEY_PURPOSE, key.pk, secret, extra=_secret_binding(key), seal_empty=True
    )
    key.fingerprint = fingerprint_of(secret)


@sensitive_variables()
def provider_key_open(key: ProviderKey, *, cipher: OwnerCipher | None = None) -> str:
    """The plaintext key, for one provider call inside a worker. Raises VaultError.

    `cipher`, the owner's already opened one (a turn has it), saves unwrapping the DEK again.

    SECURITY: the caller must use it for one call and keep it out of logs, task arguments,
    exceptions and anything stored.
    """
    if key.status == Status.REVOKED or not key.sealed_secret:
        raise VaultError("This key was revoked.")
    if cipher is None or cipher.owner_id != str(key.owner_id):
        cipher = OwnerCipher(key.owner)
    return cipher.open(KEY_PURPOSE, key.pk, key.sealed_secret, extra=_secret_binding(key))


# --- writes from the key pages -----------------------------------------------------------


def _enqueue_check(key: ProviderKey) -> None:
    from keys.tasks import verify_provider_key

    key_id = str(key.pk)
    # robust: a broker outage must not turn a saved key into a 500; the key stays
    # "checking…" and the page offers "Check again".
    transaction.on_commit(lambda: verify_provider_key.delay(key_id), robust=True)


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Who did something and from where, for the audit log."""

    actor: User
    ip_address: str | None = None


@sensitive_variables("secret")
def provider_key_create(
    *,
    owner: User,
    preset_slug: str,
    label: str,
    secret: str,
    base_url: str | None = None,
    expires_on: date | None = None,
    info: RequestInfo,
) -> ProviderKey:
    """Seal and save a new key, then queue its verification. All or nothing."""
    try:
        preset = get_preset(preset_slug)
    except KeyError:
        raise KeyVaultError("Pick a provider from the list.", field="preset") from None
    if preset.slug == "demo" and not settings.BYOK_DEMO_PROVIDER:
        raise KeyVaultError(
            "The demo provider exists only in development (make run).", field="preset"
        )
    label = _clean_label(owner=owner, label=label, default=preset.name)
    secret = clean_secret(secret, preset=preset)
    canonical_url = clean_base_url(preset, base_url)
    _check_expiry(expires_on)
    with transaction.atomic():
        highest = (
            ProviderKey.objects.for_owner(owner)
            .filter(preset=preset.slug)
            .aggregate(top=Max("priority"))["top"]
        )
        key = ProviderKey(
            owner=owner,
            preset=preset.slug,
            label=label,
            base_url=canonical_url,
            expires_on=expires_on,
            priority=0 if highest is None else highest + 1,
            status=Status.CHECKING,
            check_requested_at=timezone.now(),
        )
        _seal_secret(key, secret)
        try:
            with transaction.atomic():
                key.save(force_insert=True)
        except IntegrityError:
            raise KeyVaultError(
                "You already have a key with this label. Pick another one.", field="label"
            ) from None
        audit_record(
            owner=owner,
            actor=info.actor,
            action=Action.KEY_CREATED,
            target_id=str(key.pk),
            target_label=key.label,
            details={"provider": preset.slug, "fingerprint": key.fingerprint},
            ip_address=info.ip_address,
        )
        _enqueue_check(key)
    return key


def _clean_label(
    *, owner: User, label: str, default: str, exclude: ProviderKey | None = None
) -> str:
    label = " ".join(label.split())
    if not label:
        existing = ProviderKey.objects.for_owner(owner).filter(label__startswith=default).count()
        label = default if existing == 0 else f"{default} {existing + 1}"
    if len(label) > 80:
        raise KeyVaultError("Keep the label under 80 characters.", field="label")
    clash = ProviderKey.objects.for_owner(owner).filter(label__iexact=label)
    if exclude is not None:
        clash = clash.exclude(pk=exclude.pk)
    if clash.exists():
        raise KeyVaultError(
            "You already have a key with this label. Pick another one.", field="label"
        )
    return label


def _check_expiry(expires_on: date | None) -> None:
    if expires_on is not None and expires_on <= timezone.localdate():
        raise KeyVaultError("The expiry date must be in the future.", field="expires_on")


def provider_key_rename(*, key: ProviderKey, label: str, info: RequestInfo) -> ProviderKey:
    old = key.label
    new = _clean_label(owner=key.owner, label=label, default=key.label, exclude=key)
    if new == old:
        return key
    key.label = new
    try:
        with transaction.atomic():
            key.save(update_fields=["label", "updated_at"])
    except IntegrityError:
        raise KeyVaultError("You already have a key with this label.", field="label") from None
    audit_record(
        owner=key.owner,
        actor=info.actor,
        action=Action.KEY_RENAMED,
        target_id=str(key.pk),
        target_label=new,
        details={"from": old, "to": new},
        ip_address=info.ip_address,
    )
    return key


def provider_key_set_expiry(*, key: ProviderKey, expires_on: date | None) -> ProviderKey:
    _check_expiry(expires_on)
    key.expires_on = expires_on
    key.save(update_fields=["expires_on", "updated_at"])
    return key


@sensitive_variables("secret")
def provider_key_replace_secret(*, key: ProviderKey, secret: str, info: RequestInfo) -> ProviderKey:
    """Put a new secret in the same key (same id, history kept), then re-verify it."""
    if key.status == Status.REVOKED:
        raise KeyVaultError("A revoked key cannot be reused. Add a new key instead.")
    preset = get_preset(key.preset)
    secret = clean_secret(secret, preset=preset)
    old_fingerprint = key.fingerprint
    with transaction.atomic():
        locked = ProviderKey.objects.select_for_update().get(pk=key.pk)
        if locked.status == Status.REVOKED:  # revoked in another tab meanwhile
            raise KeyVaultError("A revoked key cannot be reused. Add a new key instead.")
        _seal_secret(locked, secret)
        locked.secret_version += 1
        locked.status = Status.CHECKING
        locked.status_reason = ""
        locked.check_requested_at = timezone.now()
        if locked.expires_on and locked.expires_on <= timezone.localdate():
            locked.expires_on = None
        locked.save(
            update_fields=[
                "sealed_secret",
                "fingerprint",
                "secret_version",
                "status",
                "status_reason",
                "check_requested_at",
                "expires_on",
                "updated_at",
            ]
        )
        audit_record(
            owner=locked.owner,
            actor=info.actor,
            action=Action.KEY_REPLACED,
            target_id=str(locked.pk),
            target_label=locked.label,
            details={
                "from": old_fingerprint,
                "to": locked.fingerprint,
                "version": locked.secret_version,
            },
            ip_address=info.ip_address,
        )
        _enqueue_check(locked)
    return locked


def provider_key_request_check(*, key: ProviderKey, info: RequestInfo | None = None) -> ProviderKey:
    """Mark the key as being checked and queue the check."""
    if key.status == Status.REVOKED:
        raise KeyVaultError("A revoked key cannot be checked.")
    now = timezone.now()
    with transaction.atomic():
        changed = (
            ProviderKey.objects.filter(pk=key.pk)
            .exclude(status=Status.REVOKED)
            .update(status=Status.CHECKING, check_requested_at=now, updated_at=now)
        )
        if not changed:
            raise KeyVaultError("A revoked key cannot be checked.")
        _enqueue_check(key)
    key.refresh_from_db()
    return key


def provider_key_move(
    *, key: ProviderKey, direction: Literal["up", "down"], info: RequestInfo
) -> ProviderKey:
    """Swap the key with its neighbour among the owner's keys for the same provider."""
    with transaction.atomic():
        siblings = list(
            ProviderKey.objects.for_owner(key.owner)
            .filter(preset=key.preset)
            .select_for_update()
            .order_by("priority", "created_at")
        )
        index = next(i for i, sibling in enumerate(siblings) if sibling.pk == key.pk)
        target = index - 1 if direction == "up" else index + 1
        if not 0 <= target < len(siblings):
            return key
        siblings[index], siblings[target] = siblings[target], siblings[index]
        for priority, sibling in enumerate(siblings):
            if sibling.priority != priority:
                sibling.priority = priority
                sibling.save(update_fields=["priority"])
        audit_record(
            owner=key.owner,
            actor=info.actor,
            action=Action.KEY_REORDERED,
            target_id=str(key.pk),
            target_label=key.label,
            details={"position": target + 1},
            ip_address=info.ip_address,
        )
    key.refresh_from_db(fields=["priority"])
    return key


def provider_key_revoke(*, key: ProviderKey, info: RequestInfo) -> ProviderKey:
    """Stop using a key for good: its sealed secret is erased; label and history stay."""
    with transaction.atomic():
        key.status = Status.REVOKED
        key.status_reason = "Revoked by you. Also revoke it in your provider's console."
        key.sealed_secret = b""
        key.revoked_at = timezone.now()
        key.save(
            update_fields=["status", "status_reason", "sealed_secret", "revoked_at", "updated_at"]
        )
        audit_record(
            owner=key.owner,
            actor=info.actor,
            action=Action.KEY_REVOKED,
            target_id=str(key.pk),
            target_label=key.label,
            details={"fingerprint": key.fingerprint},
            ip_address=info.ip_address,
        )
    return key


def provider_key_delete(*, key: ProviderKey, info: RequestInfo) -> None:
    with transaction.atomic():
        audit_record(
            owner=key.owner,
            actor=info.actor,
            action=Action.KEY_DELETED,
            target_id=str(key.pk),
            target_label=key.label,
            details={"provider": key.preset, "fingerprint": key.fingerprint},
            ip_address=info.ip_address,
        )
        key.delete()


def provider_key_mark_used(*, key: ProviderKey) -> None:
    """Record a use of the key: last-used time and the per-day use count in the audit log."""
    now = timezone.now()
    with transaction.atomic():  # one write transaction, not two
        ProviderKey.objects.filter(pk=key.pk).update(last_used_at=now)
        audit_count_use(
            owner=key.owner, action=Action.KEY_USED, target_id=str(key.pk), target_label=key.label
        )


def provider_key_mark_failing(*, key: ProviderKey, error: ProviderError) -> None:
    """A call found the key rejected or out of credit (or it would not open): the Keys page
    says so as well, in the call's words. Other errors say nothing about the key."""
    status = _STATUS_FOR_ERROR.get(error.kind)
    if status is None:
        return
    now = timezone.now()
    ProviderKey.objects.filter(pk=key.pk).exclude(status=Status.REVOKED).update(
        status=status, status_reason=error.user_message, last_verified_at=now, updated_at=now
    )


# --- verification (worker side) ----------------------------------------------------------

_STATUS_FOR_ERROR = {
    ProviderErrorKind.INVALID_KEY: Status.INVALID,
    ProviderErrorKind.NO_CREDIT: Status.NO_CREDIT,
}


def _reason_for(error: ProviderError) -> str:
    if error.kind == ProviderErrorKind.INVALID_KEY:
        return (
            "The provider rejected this key. Check that you copied all of it, or create a "
            "new key in your provider's console and replace this one."
        )
    if error.kind == ProviderErrorKind.NO_CREDIT:
        return (
            "The key works, but the account has no credit or quota left. Add credit, then "
            "check again."
        )
    if error.retryable:
        return f"{error.user_message} The key is saved; check it again in a moment."
    detail = f" The provider said: {error.provider_message}" if error.provider_message else ""
    return f"{error.user_message}{detail}"[:300]


@sensitive_variables("secret")
def provider_key_verify(*, key_id: str) -> ProviderKey | None:
    """Check a key against its provider and store the outcome. Runs in a worker.

    Returns None when the key is gone or revoked. A provider that is down or rate limiting
    leaves the key unverified with a reason; it never marks a good key invalid.
    """
    # Unscoped on purpose: the task only ever receives ids of keys its owner asked about.
    key = ProviderKey.objects.select_related("owner").filter(pk=key_id).first()
    if key is None or key.status == Status.REVOKED:
        return None
    status: str
    try:
        secret = provider_key_open(key)
        adapter = build_adapter(
            get_preset(key.preset), config=connection_config(), base_url=key.base_url
        )
        adapter.verify(secret)
        _cache_models(key, adapter, secret)
    except ProviderError as error:
        status = _STATUS_FOR_ERROR.get(error.kind, Status.UNVERIFIED)
        reason = _reason_for(error)
    except InvalidEndpoint as error:
        status, reason = Status.UNVERIFIED, error.user_message
    except VaultError:
        logger.error("key %s could not be opened for verification", key.pk)
        status = Status.UNVERIFIED
        reason = "This key could not be decrypted. Replace its secret to use it again."
    else:
        status, reason = Status.VALID, ""
    logger.debug("key %s checked at %s: %s", key.pk, key.base_url, status)
    now = timezone.now()
    if key.expires_on and key.expires_on <= timezone.localdate():
        status, reason = (
            Status.EXPIRED,
            "This key passed its expiry date. Replace it or set a new date.",
        )
    # Only the latest request's outcome lands: a re-check requested meanwhile wins.
    # Revoked and expired keys stay so until the user replaces the secret.
    ProviderKey.objects.filter(pk=key.pk, check_requested_at=key.check_requested_at).exclude(
        status__in=[Status.REVOKED, Status.EXPIRED]
    ).update(status=status, status_reason=reason, last_verified_at=now, updated_at=now)
    audit_record(
        owner=key.owner,
        action=Action.KEY_VERIFIED,
        target_id=str(key.pk),
        target_label=key.label,
        details={"result": status},
    )
    return ProviderKey.objects.filter(pk=key.pk).first()  # None if deleted meanwhile


MODELS_CACHE_SECONDS = 24 * 60 * 60


def _models_cache_key(key: ProviderKey) -> str:
    return f"byok:models:{key.pk}"


@sensitive_variables("secret")
def _cache_models(key: ProviderKey, adapter: ChatAdapter, secret: str) -> None:
    """Remember which models the key can use (ids only), for the model picker."""
    try:
        models = [model.id for model in adapter.list_models(secret)][:500]
    except ProviderError:
        return
    try:
        get_redis().set(_models_cache_key(key), json.dumps(models), ex=MODELS_CACHE_SECONDS)
    except RedisError:
        logger.warning("could not cache the model list of key %s", key.pk)


def provider_key_cached_models(key: ProviderKey) -> list[str]:
    """Model ids the key listed when it was last checked (empty if unknown)."""
    try:
        raw = get_redis().get(_models_cache_key(key))
    except RedisError:
        return []
    if not raw:
        return []
    return [str(model) for model in json.loads(str(raw))]


def provider_keys_expire() -> int:
    """Mark keys whose expiry date has come as expired. Returns how many."""
    today = timezone.localdate()
    expired = list(
        ProviderKey.objects.filter(expires_on__lte=today).exclude(
            status__in=[Status.EXPIRED, Status.REVOKED]
        )
    )
    for key in expired:
        updated = (
            ProviderKey.objects.filter(pk=key.pk)
            .exclude(status__in=[Status.EXPIRED, Status.REVOKED])
            .update(status=Status.EXPIRED, status_reason="This key passed its expiry date.")
        )
        if updated:
            audit_record(
                owner=key.owner,
                action=Action.KEY_EXPIRED,
                target_id=str(key.pk),
                target_label=key.label,
            )
    return len(expired)


def provider_keys_due_for_recheck(limit: int = 500) -> list[str]:
    """Ids of valid keys not checked for BYOK_KEY_RECHECK_HOURS, oldest first."""
    cutoff = timezone.now() - timedelta(hours=settings.BYOK_KEY_RECHECK_HOURS)
    return [
        str(pk)
        for pk in ProviderKey.objects.filter(status=Status.VALID)
        .filter(Q(last_verified_at__lt=cutoff) | Q(last_verified_at__isnull=True))
        .order_by("last_verified_at")
        .values_list("pk", flat=True)[:limit]
    ]


def request_recheck_by_id(key_id: str) -> None:
    """Queue a periodic re-check; the key keeps its status (no "checking…") meanwhile."""
    from keys.tasks import verify_provider_key

    if ProviderKey.objects.filter(pk=key_id, status=Status.VALID).update(
        check_requested_at=timezone.now()
    ):
        verify_provider_key.delay(key_id)
