"""Account exports: a ZIP of everything a user has here, built by a worker."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.utils import timezone

if TYPE_CHECKING:
    from accounts.models import User


class AccountExportQuerySet(models.QuerySet["AccountExport"]):
    def for_owner(self, user: User) -> AccountExportQuerySet:
        return self.filter(owner=user)


class AccountExport(models.Model):
    """A ZIP of the user's data, built by a worker, downloadable once until it expires.

    SECURITY: the archive holds opened conversations, so it is stored sealed under the
    owner's data key (purpose "account_export") and wiped on download or expiry.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Waiting for a worker"
        RUNNING = "running", "Preparing"
        READY = "ready", "Ready to download"
        DOWNLOADED = "downloaded", "Downloaded"
        EXPIRED = "expired", "Expired"
        FAILED = "failed", "Failed"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exports"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    progress = models.PositiveSmallIntegerField(default=0)
    sealed_archive = models.BinaryField(editable=False, default=b"")
    size_bytes = models.PositiveBigIntegerField(default=0)
    error_message = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField()
    downloaded_at = models.DateTimeField(null=True, blank=True)

    objects = AccountExportQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"export {self.pk} ({self.status})"

    @property
    def is_pending(self) -> bool:
        return self.status in {self.Status.QUEUED, self.Status.RUNNING}

    @property
    def is_downloadable(self) -> bool:
        return self.status == self.Status.READY and self.expires_at > timezone.now()
