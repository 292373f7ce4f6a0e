from __future__ import annotations

from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone


def normalize_email(email: str) -> str:
    """The form we store: surrounding space removed, the whole address lower-cased.

    Lower-casing the local part too is deliberate: no mainstream provider treats
    `Alice@x` and `alice@x` as different mailboxes, and one login per person matters more.
    """
    return email.strip().lower()


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email__iexact=normalize_email(username or ""))

    def create_user(self, email: str, password: str | None = None, **extra: Any) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=normalize_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra: Any) -> User:
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """A person with an account. The email address is the login, unique regardless of case."""

    email = models.EmailField("email address", max_length=254, unique=True)
    display_name = models.CharField(max_length=80, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(
        "operator", default=False, help_text="Can sign in to the operator site."
    )
    date_joined = models.DateTimeField(default=timezone.now)

    objects: ClassVar[UserManager] = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: ClassVar[list[str]] = []

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="accounts_user_email_ci_unique"),
        ]

    def __str__(self) -> str:
        return self.email

    def clean(self) -> None:
        super().clean()
        self.email = normalize_email(self.email)

    def get_short_name(self) -> str:
        return self.display_name or self.email.split("@")[0]

    def get_full_name(self) -> str:
        return self.display_name or self.email


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def for_owner(self, user: User) -> AuditEventQuerySet:
        return self.filter(owner=user)


class AuditEvent(models.Model):
    """Something done to or with a user's account, for the user's security log.

    `owner` is whose account it concerns; `actor` who did it (the owner, an operator, or
    None for the system, such as a worker). `details` holds metadata only: never a secret,
    never conversation text. Repeated uses (`key.used`) are counted per day in one row.
    """

    class Action(models.TextChoices):
        KEY_CREATED = "key.created", "Key added"
        KEY_REPLACED = "key.replaced", "Key secret replaced"
        KEY_RENAMED = "key.renamed", "Key renamed"
        KEY_REORDERED = "key.reordered", "Key order changed"
        KEY_VERIFIED = "key.verified", "Key checked"
        KEY_REVOKED = "key.revoked", "Key revoked"
        KEY_DELETED = "key.deleted", "Key deleted"
        KEY_EXPIRED = "key.expired", "Key expired"
        KEY_USED = "key.used", "Key used"

    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    action = models.CharField(max_length=40, choices=Action.choices)
    target_id = models.CharField(max_length=64, blank=True, db_index=True)
    target_label = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    day = models.DateField(null=True, blank=True)
    count = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["owner", "-created_at"])]
        constraints = [
            # One counting row per key and day for repeated uses.
            models.UniqueConstraint(
                fields=["owner", "action", "target_id", "day"],
                condition=models.Q(day__isnull=False),
                name="accounts_audit_one_counter_per_day",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_action_display()} · {self.target_label}"
