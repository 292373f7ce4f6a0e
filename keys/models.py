"""A user's provider keys, each sealed in the vault (`vault`) and shown by fingerprint."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, ClassVar

from django.conf import settings
from django.db import models
from django.utils import timezone

from providers.catalog import PRESETS

if TYPE_CHECKING:
    from accounts.models import User


class ProviderKeyQuerySet(models.QuerySet["ProviderKey"]):
    def for_owner(self, user: User) -> ProviderKeyQuerySet:
        return self.filter(owner=user)

    def usable(self) -> ProviderKeyQuerySet:
        return self.exclude(status__in=[ProviderKey.Status.REVOKED, ProviderKey.Status.EXPIRED])


PRESET_CHOICES = [(slug, preset.name) for slug, preset in PRESETS.items()]


class ProviderKey(models.Model):
    """A user's API key for one provider, sealed in the vault; shown only by fingerprint."""

    class Status(models.TextChoices):
        CHECKING = "checking", "Checking…"
        UNVERIFIED = "unverified", "Not verified"
        VALID = "valid", "Valid"
        INVALID = "invalid", "Invalid"
        NO_CREDIT = "no_credit", "No credit"
        EXPIRED = "expired", "Expired"
        REVOKED = "revoked", "Revoked"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="provider_keys"
    )
    preset = models.CharField("provider", max_length=32, choices=PRESET_CHOICES)
    label = models.CharField(max_length=80)
    base_url = models.CharField("base URL", max_length=500)
    # SECURITY: AES-256-GCM under the owner's DEK; AAD binds it to this row, owner, preset
    # and base URL (keys.services.secret_context). Never decoded outside a worker call.
    sealed_secret = models.BinaryField(editable=False)
    fingerprint = models.CharField(max_length=40)
    secret_version = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CHECKING)
    status_reason = models.CharField(max_length=300, blank=True)
    check_requested_at = models.DateTimeField(null=True, blank=True)
    last_verified_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    expires_on = models.DateField("expires on", null=True, blank=True)
    priority = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects: ClassVar[ProviderKeyQuerySet] = ProviderKeyQuerySet.as_manager()  # type: ignore[assignment]

    class Meta:
        ordering = ["preset", "priority", "created_at"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "label"], name="keys_unique_label_per_owner"),
        ]
        indexes = [models.Index(fields=["owner", "preset", "priority"])]

    def __str__(self) -> str:
        return f"{self.label} ({self.fingerprint})"

    @property
    def preset_name(self) -> str:
        preset = PRESETS.get(self.preset)
        return preset.name if preset else self.preset

    @property
    def is_usable(self) -> bool:
        return self.status not in {self.Status.REVOKED, self.Status.EXPIRED}

    @property
    def badge(self) -> str:
        """CSS modifier for the status badge."""
        return {
            self.Status.VALID: "ok",
            self.Status.CHECKING: "",
            self.Status.UNVERIFIED: "warn",
            self.Status.NO_CREDIT: "warn",
        }.get(self.Status(self.status), "err")
