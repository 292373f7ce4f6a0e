"""One wrapped data key (DEK) per user."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class DataKey(models.Model):
    """A user's data key (DEK), wrapped under a master key. Exactly one per user.

    Deleting it makes everything sealed for the user unreadable (crypto-shredding).
    """

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="data_key"
    )
    wrapped = models.BinaryField()
    kek_id = models.CharField("master key id", max_length=64, db_index=True)
    created_at = models.DateTimeField(default=timezone.now)
    rotated_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"data key of user {self.owner_id} under {self.kek_id}"
