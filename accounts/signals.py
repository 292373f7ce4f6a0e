"""Log-ins, log-outs and failures go to the owner's security log and the session list.

Receivers only: each calls one service. Connected in AccountsConfig.ready().
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest

from accounts import services, sudo
from accounts.models import AuditEvent, User, UserSession, normalize_email


@receiver(user_logged_in, dispatch_uid="accounts.logged_in")
def on_logged_in(sender: object, request: HttpRequest | None, user: User, **kwargs: Any) -> None:
    if request is None or not hasattr(request, "session"):
        return
    request.user = user
    # The password (and second factor, when on) was just entered: that counts as sudo.
    sudo.sudo_grant(request)
    services.session_touch(request, force=True)
    services.audit_request(
        request, owner=user, actor=user, action=AuditEvent.Action.LOGIN_SUCCEEDED
    )


@receiver(user_logged_out, dispatch_uid="accounts.logged_out")
def on_logged_out(
    sender: object, request: HttpRequest | None, user: User | None, **kwargs: Any
) -> None:
    if request is None or user is None:
        return
    key = request.session.session_key
    if key:
        UserSession.objects.filter(session_key=key).delete()
    services.audit_request(request, owner=user, actor=user, action=AuditEvent.Action.LOGGED_OUT)


@receiver(user_login_failed, dispatch_uid="accounts.login_failed")
def on_login_failed(
    sender: object, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    """A failure against an existing account lands in that account's log (no password)."""
    if request is None:
        return
    email = normalize_email(str(credentials.get("username") or ""))[:254]
    user = User.objects.filter(email__iexact=email).first() if email else None
    if user is None:
        return
    step = str(credentials.get("step") or "password")
    services.audit_request(
        request, owner=user, action=AuditEvent.Action.LOGIN_FAILED, details={"step": step}
    )


def on_locked_out(
    sender: object, request: HttpRequest, username: str | None, **kwargs: Any
) -> None:
    email = normalize_email(str(username or ""))[:254]
    user = User.objects.filter(email__iexact=email).first() if email else None
    if user is not None:
        services.audit_request(request, owner=user, action=AuditEvent.Action.LOCKED_OUT)
