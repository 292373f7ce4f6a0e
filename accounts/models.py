from __future__ import annotations

import base64
import hashlib
import time
import uuid
from datetime import datetime
from typing import Any, ClassVar

from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_variables
from django_otp.models import Device, ThrottlingMixin
from django_otp.oath import TOTP

from vault.services import OwnerCipher


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


class User(AbstractBaseUser, PermissionsMixin):  # type: ignore[django-manager-missing]
    """A person with an account. The email address is the login, unique regardless of case."""

    email = models.EmailField("email address", max_length=254, unique=True)
    display_name = models.CharField(max_length=80, blank=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(
        "operator", default=False, help_text="Can sign in to the operator site."
    )
    date_joined = models.DateTimeField(default=timezone.now)
    # Opt-in: after a conversation's first reply, its model writes the title (chat.titles),
    # with the user's own key, billed to them as a usage event of its own.
    model_titles = models.BooleanField(
        "let the model write chat titles",
        default=False,
        help_text=(
            "After a conversation's first reply, its model writes a short title, with your "
            "key: a few tokens each, shown on the Usage page as a title."
        ),
    )

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
    None for the system, such as a worker). `by_operator` says an operator did it, and stays
    true if the operator's account goes later; the owner sees "an operator", never who
    (`actor` is for the operators' own audit). `details` holds metadata only: never a
    secret, never conversation text. Repeated uses (`key.used`) are counted per day in one
    row.
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
        LOGIN_SUCCEEDED = "login.succeeded", "Logged in"
        LOGIN_FAILED = "login.failed", "Failed login"
        LOCKED_OUT = "login.locked_out", "Locked out after failed attempts"
        LOGGED_OUT = "login.logged_out", "Logged out"
        SUDO_CONFIRMED = "sudo.confirmed", "Password confirmed"
        SUDO_FAILED = "sudo.failed", "Failed password confirmation"
        TWO_FACTOR_ENABLED = "2fa.enabled", "Two-factor authentication turned on"
        TWO_FACTOR_DISABLED = "2fa.disabled", "Two-factor authentication turned off"
        RECOVERY_CODES_CREATED = "2fa.recovery_codes", "New recovery codes created"
        RECOVERY_CODE_USED = "2fa.recovery_code_used", "Recovery code used"
        PASSWORD_CHANGED = "account.password_changed", "Password changed"
        PASSWORD_RESET = "account.password_reset", "Password reset by email"
        EMAIL_CHANGED = "account.email_changed", "Email address changed"
        SESSION_ENDED = "account.session_ended", "Session ended"
        EXPORT_REQUESTED = "account.export_requested", "Data export requested"
        EXPORT_DOWNLOADED = "account.export_downloaded", "Data export downloaded"
        OPERATOR_CHANGED = "operator.changed", "Account changed by an operator"
        # Operator actions (the admin). Their labels say "by an operator", never who.
        OPERATOR_CREATED = "operator.created", "Account created by an operator"
        OPERATOR_DISABLED = "operator.disabled", "Account disabled by an operator"
        OPERATOR_ENABLED = "operator.enabled", "Account enabled by an operator"
        OPERATOR_SESSIONS_ENDED = "operator.sessions_ended", "All sessions ended by an operator"
        OPERATOR_TWO_FACTOR_RESET = (
            "operator.2fa_reset",
            "Two-factor authentication was reset by an operator",
        )
        OPERATOR_PASSWORD_RESET_SENT = (
            "operator.password_reset_sent",
            "Password reset link sent to you by an operator",
        )
        OPERATOR_ROLE_CHANGED = "operator.role_changed", "Operator role changed by an operator"
        OPERATOR_RATE_LIMITS = "operator.rate_limits", "Rate limits changed by an operator"
        OPERATOR_PRICE_CHANGED = "operator.price_changed", "Model price changed by an operator"

    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="audit_events")
    actor = models.ForeignKey(
        User, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    by_operator = models.BooleanField(default=False)
    action = models.CharField(max_length=40, choices=Action.choices)
    target_id = models.CharField(max_length=64, blank=True, db_index=True)
    target_label = models.CharField(max_length=200, blank=True)
    details = models.JSONField(default=dict, blank=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
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

    @property
    def category(self) -> str:
        """The security log filter this event falls under (see AUDIT_CATEGORIES)."""
        return "operator" if self.by_operator else category_of(self.action)

    @property
    def description(self) -> str:
        """What happened, as the owner reads it: an operator's doing says so, never who."""
        label = str(self.get_action_display())
        if self.by_operator and "by an operator" not in label:
            return f"{label} by an operator"
        return label


# Security-log filters: name -> (label, action prefixes).
AUDIT_CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "login": ("Logins", ("login.", "sudo.")),
    "2fa": ("Two-factor", ("2fa.",)),
    "keys": ("Keys", ("key.",)),
    "account": ("Account", ("account.",)),
    "operator": ("Operator actions", ("operator.",)),
}


def category_of(action: str) -> str:
    for name, (_label, prefixes) in AUDIT_CATEGORIES.items():
        if action.startswith(prefixes):
            return name
    return "account"


class UserSessionQuerySet(models.QuerySet["UserSession"]):
    def for_owner(self, user: User) -> UserSessionQuerySet:
        return self.filter(owner=user)


class UserSession(models.Model):
    """One signed-in browser: where it came from and when it was last seen.

    `session_key` names the row in Django's session store; ending the session deletes both.
    URLs carry `id`, never the session key.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sessions")
    # SECURITY: a bearer credential; never rendered, never in a URL.
    session_key = models.CharField(max_length=64, unique=True)
    ip_address = models.GenericIPAddressField(null=True, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_seen_at = models.DateTimeField(default=timezone.now)

    objects = UserSessionQuerySet.as_manager()

    class Meta:
        ordering = ["-last_seen_at"]

    def __str__(self) -> str:
        return f"session of {self.owner_id} from {self.ip_address}"

    @property
    def device(self) -> str:
        return describe_user_agent(self.user_agent)


def describe_user_agent(user_agent: str) -> str:
    """A short human name for a browser, such as "Firefox on Linux"."""
    ua = user_agent or ""
    browser = next(
        (
            name
            for token, name in (
                ("Edg/", "Edge"),
                ("OPR/", "Opera"),
                ("Firefox/", "Firefox"),
                ("Chromium/", "Chromium"),
                ("Chrome/", "Chrome"),
                ("Safari/", "Safari"),
                ("curl/", "curl"),
            )
            if token in ua
        ),
        "Unknown browser",
    )
    system = next(
        (
            name
            for token, name in (
                ("Android", "Android"),
                ("iPhone", "iPhone"),
                ("iPad", "iPad"),
                ("Windows", "Windows"),
                ("Mac OS X", "macOS"),
                ("CrOS", "ChromeOS"),
                ("Linux", "Linux"),
            )
            if token in ua
        ),
        "",
    )
    return f"{browser} on {system}" if system else browser


# The purpose a TOTP seed is sealed under (bound to the device row), vault.services.
SEED_PURPOSE = "totp_seed"


class TOTPDevice(ThrottlingMixin, Device):
    """An authenticator app (TOTP, RFC 6238) whose seed is sealed in the owner's vault.

    django-otp's own TOTPDevice stores the seed in plain hex; this one stores only AES-GCM
    ciphertext bound to the owner and this row (purpose "totp_seed"), opened per check.
    """

    # Annotated because django-otp's Device base is untyped.
    sealed_seed: models.BinaryField[bytes, bytes] = models.BinaryField(editable=False, default=b"")
    step: models.PositiveSmallIntegerField[int, int] = models.PositiveSmallIntegerField(default=30)
    digits: models.PositiveSmallIntegerField[int, int] = models.PositiveSmallIntegerField(default=6)
    tolerance: models.PositiveSmallIntegerField[int, int] = models.PositiveSmallIntegerField(
        default=1
    )
    drift: models.SmallIntegerField[int, int] = models.SmallIntegerField(default=0)
    last_t: models.BigIntegerField[int, int] = models.BigIntegerField(default=-1)
    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )

    class Meta:
        verbose_name = "authenticator app"

    def get_throttle_factor(self) -> int:
        return 1

    @method_decorator(sensitive_variables("text"))
    def seed(self) -> bytes:
        """The TOTP seed, opened from the vault for the code being checked."""
        text = OwnerCipher(self.user).open(SEED_PURPOSE, self.pk, bytes(self.sealed_seed))
        return base64.b32decode(text)

    def verify_token(self, token: object) -> bool:
        allowed, _ = self.verify_is_allowed()
        if not allowed:
            return False
        text = str(token).strip().replace(" ", "")
        verified = False
        if text.isdigit() and len(text) == self.digits:
            totp = TOTP(self.seed(), self.step, 0, self.digits, self.drift)
            totp.time = time.time()
            verified = totp.verify(int(text), self.tolerance, self.last_t + 1)
            if verified:
                # Each code works once: last_t only moves forward.
                self.last_t = totp.t()
                self.drift = totp.drift
                self.throttle_reset(commit=False)
                self.save(
                    update_fields=[
                        "last_t",
                        "drift",
                        "throttling_failure_timestamp",
                        "throttling_failure_count",
                    ]
                )
        if not verified:
            self.throttle_increment(commit=False)
            self.save(update_fields=["throttling_failure_timestamp", "throttling_failure_count"])
        return verified


class RecoveryCodeDevice(Device):
    """Ten single-use recovery codes, stored as SHA-256 hashes only."""

    created_at: models.DateTimeField[datetime, datetime] = models.DateTimeField(
        default=timezone.now
    )

    class Meta:
        verbose_name = "recovery codes"

    def verify_token(self, token: object) -> bool:
        digest = hash_recovery_code(str(token))
        # Conditional UPDATE: two requests racing with one code cannot both win.
        used = self.codes.filter(code_hash=digest, used_at__isnull=True).update(
            used_at=timezone.now()
        )
        return used == 1

    def remaining(self) -> int:
        return self.codes.filter(used_at__isnull=True).count()


def normalize_recovery_code(code: str) -> str:
    return "".join(character for character in code.lower() if character.isalnum())


def hash_recovery_code(code: str) -> str:
    # A plain hash is enough: codes carry 60 random bits, far beyond any guessing or
    # precomputation, and a per-code salt would cost a lookup by hash.
    return hashlib.sha256(normalize_recovery_code(code).encode("utf-8")).hexdigest()


class RecoveryCode(models.Model):
    device = models.ForeignKey(RecoveryCodeDevice, on_delete=models.CASCADE, related_name="codes")
    code_hash = models.CharField(max_length=64, db_index=True)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"recovery code {self.pk}"
