from __future__ import annotations

from importlib import import_module

from django.conf import settings
from django.core import signing
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone

from accounts import security
from accounts.forms import RESET_EMAIL_TEMPLATE, RESET_SUBJECT_TEMPLATE, PasswordResetForm
from accounts.models import AuditEvent, User, UserSession, normalize_email
from accounts.security import user_agent
from vault.services import data_key_delete


class AccountError(Exception):
    """An expected failure with a message fit to show the user."""


def user_create(*, email: str, password: str) -> User:
    """Create an account. Raises AccountError if the email is taken in any letter case.

    The form checks first; the unique index on lower(email) settles the race of two sign-ups
    at once.
    """
    try:
        with transaction.atomic():
            return User.objects.create_user(email=normalize_email(email), password=password)
    except IntegrityError as error:
        raise AccountError("An account with this email address already exists.") from error


def user_update_profile(*, user: User, display_name: str) -> User:
    user.display_name = display_name.strip()
    user.save(update_fields=["display_name"])
    return user


def user_update_chat_preferences(*, user: User, model_titles: bool) -> User:
    """Save the user's chat preferences: whether a conversation's model writes its title
    after the first reply (chat.titles; billed to the user's key)."""
    user.model_titles = model_titles
    user.save(update_fields=["model_titles"])
    return user


def audit_record(
    *,
    owner: User,
    action: str,
    actor: User | None = None,
    target_id: str = "",
    target_label: str = "",
    details: dict[str, object] | None = None,
    ip_address: str | None = None,
    user_agent: str = "",
) -> AuditEvent:
    """Append one event to `owner`'s security log. `details` must hold no secret.

    The one rule of attribution: an event is an operator's when its action is an
    `operator.*` one or its actor is someone other than the owner (only operators act on
    another's account). The owner's log then says "by an operator", never who.
    """
    by_operator = action.startswith("operator.") or (actor is not None and actor.pk != owner.pk)
    return AuditEvent.objects.create(
        owner=owner,
        actor=actor,
        by_operator=by_operator,
        action=action,
        target_id=target_id,
        target_label=target_label[:200],
        details=details or {},
        ip_address=ip_address,
        user_agent=user_agent[:300],
    )


def audit_request(
    request: HttpRequest,
    *,
    owner: User,
    action: str,
    actor: User | None = None,
    details: dict[str, object] | None = None,
    target_id: str = "",
    target_label: str = "",
) -> AuditEvent:
    """`audit_record` with the address and browser of `request`."""
    return audit_record(
        owner=owner,
        actor=actor,
        action=action,
        details=details,
        target_id=target_id,
        target_label=target_label,
        ip_address=client_ip(request),
        user_agent=user_agent(request),
    )


def operator_audit(
    request: HttpRequest,
    *,
    owner: User,
    action: str,
    target_id: str = "",
    target_label: str = "",
    details: dict[str, object] | None = None,
) -> AuditEvent:
    """Record an operator's action (`request.user`) in `owner`'s security log.

    The operator, address and browser are kept for the operators' audit; the owner's page
    shows "an operator" only. SECURITY: `details` carries metadata only, never a secret.
    """
    return audit_request(
        request,
        owner=owner,
        actor=request.user,  # type: ignore[arg-type]
        action=action,
        target_id=target_id,
        target_label=target_label,
        details=details,
    )


def audit_count_use(*, owner: User, action: str, target_id: str, target_label: str) -> None:
    """Count one more use of a target today, in a single row per target and day."""
    today = timezone.now().date()
    updated = AuditEvent.objects.filter(
        owner=owner, action=action, target_id=target_id, day=today
    ).update(count=F("count") + 1, created_at=timezone.now())
    if updated:
        return
    try:
        with transaction.atomic():
            AuditEvent.objects.create(
                owner=owner,
                action=action,
                target_id=target_id,
                target_label=target_label,
                day=today,
            )
    except IntegrityError:  # another worker created today's row first
        AuditEvent.objects.filter(
            owner=owner, action=action, target_id=target_id, day=today
        ).update(count=F("count") + 1)


def client_ip(request: HttpRequest) -> str | None:
    """The client's address, behind exactly BYOK_TRUSTED_PROXY_COUNT proxies."""
    return security.client_ip(request)


# --- e-mail and password ------------------------------------------------------------------


EMAIL_CHANGE_SALT = "accounts.email_change"
EMAIL_CHANGE_LINK_SECONDS = 60 * 60 * 24


def email_change_request(*, user: User, email: str, request: HttpRequest) -> None:
    """Ask to change the login address to `email`: mail a confirmation link to it. Raises
    AccountError for the user's own address.

    SECURITY: the same for every address, so the form reveals nothing about other
    accounts. An address another account uses gets a notice instead of a link (its owner
    learns that someone tried; nothing changes); the link itself checks again.
    """
    new = normalize_email(email)
    if new == normalize_email(user.email):
        raise AccountError("That is already your address.")
    if User.objects.filter(email__iexact=new).exclude(pk=user.pk).exists():
        _send_email(request, "email_change_taken", to=new, context={"email": new})
        return
    token = signing.dumps(
        {"user": str(user.pk), "from": user.email, "to": new}, salt=EMAIL_CHANGE_SALT
    )
    link = request.build_absolute_uri(reverse("accounts:email_change_confirm", args=[token]))
    _send_email(
        request, "email_change", to=new, context={"email": new, "old": user.email, "link": link}
    )


def email_change_pending(*, user: User, token: str) -> str:
    """The new address a confirmation link of `user`'s asks for. Raises AccountError for a
    link that is expired, someone else's, used already or made for an earlier address."""
    try:
        claim = signing.loads(token, salt=EMAIL_CHANGE_SALT, max_age=EMAIL_CHANGE_LINK_SECONDS)
    except signing.BadSignature:
        raise AccountError(_LINK_UNUSABLE) from None
    if (
        not isinstance(claim, dict)
        or claim.get("user") != str(user.pk)
        or claim.get("from") != user.email
        or not isinstance(claim.get("to"), str)
    ):
        raise AccountError(_LINK_UNUSABLE)
    return str(claim["to"])


_LINK_UNUSABLE = (
    "This confirmation link has expired or can no longer be used. Ask for a new one from "
    "Settings, signed in as the account whose address you are changing."
)


def email_change_confirm(*, user: User, token: str, request: HttpRequest) -> User:
    """Change the login address to the one the confirmation link was sent to. Raises
    AccountError when the link is not usable, or the address is taken by now."""
    new = email_change_pending(user=user, token=token)
    old = user.email
    if User.objects.filter(email__iexact=new).exclude(pk=user.pk).exists():
        raise AccountError(_LINK_UNUSABLE)
    user.email = new
    try:
        with transaction.atomic():
            user.save(update_fields=["email"])
            audit_request(
                request,
                owner=user,
                actor=user,
                action=AuditEvent.Action.EMAIL_CHANGED,
                details={"from": old, "to": new},
            )
    except IntegrityError as error:
        user.email = old
        raise AccountError(_LINK_UNUSABLE) from error
    return user


def _send_email(request: HttpRequest, template: str, *, to: str, context: dict[str, str]) -> None:
    context = {**context, "site": request.get_host()}
    subject = render_to_string(f"accounts/email/{template}_subject.txt", context)
    body = render_to_string(f"accounts/email/{template}.txt", context)
    send_mail(" ".join(subject.split()), body, None, [to])


# --- sessions -----------------------------------------------------------------------------

SEEN_EVERY_SECONDS = 60


def session_touch(request: HttpRequest, *, force: bool = False) -> None:
    """Record that this signed-in session was seen (at most once a minute unless `force`)."""
    session = request.session
    key = session.session_key
    user = request.user
    if not key or not user.is_authenticated:
        return
    now = timezone.now()
    last = session.get("byok_seen")
    recent = isinstance(last, int | float) and now.timestamp() - last < SEEN_EVERY_SECONDS
    if recent and not force:
        return
    session["byok_seen"] = now.timestamp()
    UserSession.objects.update_or_create(
        session_key=key,
        defaults={
            "owner": user,
            "ip_address": client_ip(request),
            "user_agent": user_agent(request),
            "last_seen_at": now,
        },
        create_defaults={
            "owner": user,
            "ip_address": client_ip(request),
            "user_agent": user_agent(request),
            "last_seen_at": now,
            "created_at": now,
        },
    )


def session_list(*, user: User) -> list[UserSession]:
    """The user's sessions that still exist in the session store, most recent first."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    alive = []
    for row in UserSession.objects.for_owner(user):
        if store().exists(row.session_key):
            alive.append(row)
        else:
            row.delete()
    return alive


def session_end(*, row: UserSession, request: HttpRequest | None = None) -> None:
    """Sign one session out: its data goes from the session store, its row from the list."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    store(session_key=row.session_key).delete()
    row.delete()
    if request is not None:
        audit_request(
            request,
            owner=row.owner,
            actor=row.owner,
            action=AuditEvent.Action.SESSION_ENDED,
            details={"device": row.device, "ip": row.ip_address or ""},
        )


def sessions_end_others(*, user: User, keep_session_key: str | None) -> int:
    """End every session of `user` except `keep_session_key`. Returns how many ended.

    Every log-in creates its row (accounts.signals), so the rows name every session.
    """
    store = import_module(settings.SESSION_ENGINE).SessionStore
    ended = 0
    for row in UserSession.objects.for_owner(user).exclude(session_key=keep_session_key or ""):
        store(session_key=row.session_key).delete()
        row.delete()
        ended += 1
    return ended


# --- operator actions on an account (the admin) ------------------------------------------------
# Each changes the account and writes its line in the owner's security log, in one place, so
# the admin's actions and its change form leave the same trace.


def account_disable(*, user: User, request: HttpRequest) -> bool:
    """An operator disables `user`: no more log-ins, every session ended. False if it was."""
    with transaction.atomic():
        if not User.objects.filter(pk=user.pk, is_active=True).update(is_active=False):
            return False
        user.is_active = False
        ended = sessions_end_others(user=user, keep_session_key=None)
        operator_audit(
            request,
            owner=user,
            action=AuditEvent.Action.OPERATOR_DISABLED,
            details={"sessions": ended},
        )
    return True


def account_enable(*, user: User, request: HttpRequest) -> bool:
    """An operator enables `user` again. False if the account was enabled already."""
    with transaction.atomic():
        if not User.objects.filter(pk=user.pk, is_active=False).update(is_active=True):
            return False
        user.is_active = True
        operator_audit(request, owner=user, action=AuditEvent.Action.OPERATOR_ENABLED)
    return True


def account_sessions_end(*, user: User, request: HttpRequest) -> int:
    """An operator signs `user` out everywhere. Returns how many sessions ended."""
    ended = sessions_end_others(user=user, keep_session_key=None)
    operator_audit(
        request,
        owner=user,
        action=AuditEvent.Action.OPERATOR_SESSIONS_ENDED,
        details={"sessions": ended},
    )
    return ended


def account_created_by_operator(*, user: User, request: HttpRequest) -> None:
    """The trail of an account an operator created (with no usable password)."""
    operator_audit(request, owner=user, action=AuditEvent.Action.OPERATOR_CREATED)


def account_changed_by_operator(*, user: User, request: HttpRequest, fields: list[str]) -> None:
    """The trail of an operator's edit of `user`'s profile: the field names, not values."""
    if fields:
        operator_audit(
            request,
            owner=user,
            action=AuditEvent.Action.OPERATOR_CHANGED,
            details={"fields": ", ".join(sorted(fields))},
        )


def account_role_changed(*, user: User, request: HttpRequest) -> None:
    """The trail of a superuser changing `user`'s staff status, superuser status or roles."""
    roles = ", ".join(sorted(user.groups.values_list("name", flat=True))) or "none"
    operator_audit(
        request,
        owner=user,
        action=AuditEvent.Action.OPERATOR_ROLE_CHANGED,
        details={
            "operator": "yes" if user.is_staff else "no",
            "superuser": "yes" if user.is_superuser else "no",
            "roles": roles,
        },
    )


def password_reset_link_send(*, user: User, request: HttpRequest) -> bool:
    """E-mail `user` Django's password reset link, at an operator's request.

    The link goes only into the e-mail to the account's own address: the operator never
    sees it, and nothing here logs it. An inactive account gets none. Returns whether one
    was sent. The user's log says a link was sent by an operator.
    """
    if not user.is_active:
        return False
    form = PasswordResetForm({"email": user.email})
    if not form.is_valid():
        return False
    form.save(
        request=request,
        use_https=request.is_secure(),
        subject_template_name=RESET_SUBJECT_TEMPLATE,
        email_template_name=RESET_EMAIL_TEMPLATE,
        extra_email_context={"by_operator": "yes"},
    )
    operator_audit(request, owner=user, action=AuditEvent.Action.OPERATOR_PASSWORD_RESET_SENT)
    return True


# --- account deletion -----------------------------------------------------------------------


def user_delete(*, user: User) -> None:
    """Delete the account: its data key first (crypto-shredding), then every row.

    Once the DataKey row is gone nothing sealed for the user can be opened again, even from
    a copy of the database taken earlier once the master key it was wrapped under is
    retired (README, "Deleting an account").
    """
    sessions_end_others(user=user, keep_session_key=None)
    with transaction.atomic():
        data_key_delete(owner=user)
        user.delete()
