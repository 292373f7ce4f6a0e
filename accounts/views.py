from __future__ import annotations

import time
from typing import Any

from axes.handlers.proxy import AxesProxyHandler
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseRedirect,
)
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import pluralize
from django.urls import reverse, reverse_lazy
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_otp import login as otp_login

from accounts import security, twofactor
from accounts.forms import (
    RESET_EMAIL_TEMPLATE,
    RESET_SUBJECT_TEMPLATE,
    ChatPreferencesForm,
    EmailAuthenticationForm,
    EmailChangeForm,
    OtpTokenForm,
    PasswordResetForm,
    ProfileForm,
    SecurityLogFilterForm,
    SignupForm,
    SudoForm,
    TotpConfirmForm,
)
from accounts.http import AuthenticatedRequest
from accounts.models import (
    AUDIT_CATEGORIES,
    AuditEvent,
    RecoveryCodeDevice,
    User,
    UserSession,
)
from accounts.services import (
    AccountError,
    audit_request,
    client_ip,
    email_change_confirm,
    email_change_pending,
    email_change_request,
    session_end,
    session_list,
    sessions_end_others,
    user_create,
    user_update_chat_preferences,
    user_update_profile,
)
from accounts.sudo import require_sudo, sudo_grant

PENDING_LOGIN = "byok_pending_login"
PENDING_LOGIN_SECONDS = 300
Action = AuditEvent.Action


def _safe_next(request: HttpRequest, default: str = "home") -> str:
    candidate = request.POST.get("next") or request.GET.get("next") or ""
    if candidate and url_has_allowed_host_and_scheme(
        candidate, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return candidate
    return reverse(default)


def locked_out(
    request: HttpRequest, response: HttpResponse | None = None, credentials: Any = None
) -> HttpResponse:
    """django-axes' lock-out page: says how long to wait. 429, with Retry-After."""
    username = security.axes_username(request, credentials)
    seconds = security.lockout_seconds_left(request, username)
    rendered = render(
        request,
        "accounts/locked_out.html",
        {"wait": security.wait_text(seconds)},
        status=429,
    )
    rendered["Retry-After"] = str(int(seconds))
    return rendered


@sensitive_post_parameters("password1", "password2")
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_create(
                email=form.cleaned_data["email"], password=form.cleaned_data["password1"]
            )
        except AccountError as error:
            form.add_error("email", str(error))
        else:
            login(request, user, backend="accounts.backends.EmailBackend")
            messages.success(request, "Welcome to BYOK. Your account is ready.")
            return redirect("home")
    return render(request, "accounts/signup.html", {"form": form})


class LoginView(auth_views.LoginView):
    """Password first; users with two-factor authentication then enter a code."""

    form_class = EmailAuthenticationForm
    template_name = "accounts/login.html"
    redirect_authenticated_user = True

    def form_valid(self, form: EmailAuthenticationForm) -> HttpResponse:  # type: ignore[override]
        user = form.get_user()
        if not twofactor.has_two_factor(user):
            return super().form_valid(form)
        # SECURITY: not logged in yet; the session only remembers who passed the password.
        self.request.session[PENDING_LOGIN] = {
            "user": str(user.pk),
            "backend": getattr(user, "backend", "accounts.backends.EmailBackend"),
            "at": time.time(),
        }
        query = urlencode({"next": self.get_redirect_url() or ""})
        return HttpResponseRedirect(f"{reverse('accounts:login_verify')}?{query}")


def _pending_user(request: HttpRequest) -> tuple[User, str] | None:
    pending = request.session.get(PENDING_LOGIN)
    if not isinstance(pending, dict) or time.time() - pending.get("at", 0) > PENDING_LOGIN_SECONDS:
        return None
    user = User.objects.filter(pk=str(pending.get("user")), is_active=True).first()
    return (user, str(pending.get("backend"))) if user is not None else None


def _second_factor_failed(request: HttpRequest, user: User) -> None:
    # Counted by django-axes like a wrong password (per account and per address).
    user_login_failed.send(
        sender=__name__, credentials={"username": user.email, "step": "2fa"}, request=request
    )


@never_cache
@sensitive_post_parameters("token")
@require_http_methods(["GET", "POST"])
def login_verify(request: HttpRequest) -> HttpResponse:
    """Second step of a log-in: an authenticator code or a recovery code."""
    found = _pending_user(request)
    if found is None:
        messages.error(request, "Log in again: the sign-in took too long.")
        return redirect("accounts:login")
    user, backend = found
    if not AxesProxyHandler.is_allowed(request, {"username": user.email}):
        return locked_out(request, None, {"username": user.email})
    form = OtpTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = twofactor.verify_second_factor(user, form.cleaned_data["token"])
        if device is not None:
            del request.session[PENDING_LOGIN]
            login(request, user, backend=backend)
            otp_login(request, device)
            if isinstance(device, RecoveryCodeDevice):
                _recovery_code_used(request, user, device)
            return HttpResponseRedirect(_safe_next(request))
        _second_factor_failed(request, user)
        form.add_error("token", "That code is not right, or it was already used.")
    return render(
        request,
        "accounts/login_verify.html",
        {"form": form, "next": request.GET.get("next", "")},
        status=400 if form.errors else 200,
    )


def _recovery_code_used(request: HttpRequest, user: User, device: RecoveryCodeDevice) -> None:
    left = device.remaining()
    audit_request(
        request, owner=user, actor=user, action=Action.RECOVERY_CODE_USED, details={"left": left}
    )
    messages.warning(
        request,
        f"You used a recovery code; {left} left. Create new ones in Settings if you are "
        "running low.",
    )


class LogoutView(auth_views.LogoutView):
    http_method_names = ["post", "options"]


class PasswordChangeView(auth_views.PasswordChangeView):
    template_name = "accounts/password_change.html"
    success_url = reverse_lazy("accounts:settings")

    def form_valid(self, form):
        old_key = self.request.session.session_key
        response = super().form_valid(form)  # cycles this session's key
        UserSession.objects.filter(session_key=old_key).update(
            session_key=self.request.session.session_key
        )
        # SECURITY: a new password signs every other browser out.
        ended = sessions_end_others(
            user=self.request.user,  # type: ignore[arg-type]
            keep_session_key=self.request.session.session_key,
        )
        audit_request(
            self.request,
            owner=self.request.user,  # type: ignore[arg-type]
            actor=self.request.user,  # type: ignore[arg-type]
            action=Action.PASSWORD_CHANGED,
            details={"other_sessions_ended": ended},
        )
        messages.success(
            self.request,
            "Your password was changed."
            + (
                f" {ended} other session{pluralize(ended)} {pluralize(ended, 'was,were')} "
                "signed out."
                if ended
                else ""
            ),
        )
        return response


class PasswordResetView(auth_views.PasswordResetView):
    form_class = PasswordResetForm
    template_name = "accounts/password_reset.html"
    email_template_name = RESET_EMAIL_TEMPLATE
    subject_template_name = RESET_SUBJECT_TEMPLATE
    success_url = reverse_lazy("accounts:password_reset_done")

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        from django.conf import settings

        window = settings.BYOK_PASSWORD_RESET_WINDOW_MINUTES * 60
        limit = settings.BYOK_PASSWORD_RESET_LIMIT
        email = str(request.POST.get("email", ""))[:254].strip().lower()
        wait = max(
            security.rate_limit_hit(
                "reset-ip", client_ip(request) or "-", limit=limit, window_seconds=window
            ),
            security.rate_limit_hit("reset-email", email, limit=limit, window_seconds=window)
            if email
            else 0,
        )
        if wait:
            response = render(
                request,
                "accounts/locked_out.html",
                {"wait": security.wait_text(wait), "reset": True},
                status=429,
            )
            response["Retry-After"] = str(wait)
            return response
        return super().post(request, *args, **kwargs)


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "accounts/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "accounts/password_reset_confirm.html"
    success_url = reverse_lazy("accounts:password_reset_complete")

    def form_valid(self, form):
        response = super().form_valid(form)
        # Whoever had the old password is signed out everywhere.
        sessions_end_others(user=self.user, keep_session_key=None)
        audit_request(self.request, owner=self.user, action=Action.PASSWORD_RESET)
        return response


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "accounts/password_reset_complete.html"


# --- settings -----------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def account_settings(request: AuthenticatedRequest) -> HttpResponse:
    form = ProfileForm(request.POST or None, instance=request.user)
    if request.method == "POST" and form.is_valid():
        user_update_profile(user=request.user, display_name=form.cleaned_data["display_name"])
        messages.success(request, "Your profile was saved.")
        return redirect("accounts:settings")
    recovery = RecoveryCodeDevice.objects.filter(user=request.user).first()
    return render(
        request,
        "accounts/settings.html",
        {
            "form": form,
            "chat_preferences": ChatPreferencesForm(instance=request.user),
            "two_factor": twofactor.has_two_factor(request.user),
            "recovery_left": recovery.remaining() if recovery else 0,
            "sessions": session_list(user=request.user),
            "current_session_key": request.session.session_key,
        },
    )


@login_required
@require_POST
def chat_preferences(request: AuthenticatedRequest) -> HttpResponse:
    """Save the chat preferences (a checkbox: absent means off, never an error)."""
    form = ChatPreferencesForm(request.POST, instance=request.user)
    if form.is_valid():
        user_update_chat_preferences(
            user=request.user, model_titles=form.cleaned_data["model_titles"]
        )
        messages.success(request, "Your chat preferences were saved.")
    return redirect("accounts:settings")


@sensitive_post_parameters("password", "token")
@sensitive_variables("form")
@login_required
@never_cache
@require_http_methods(["GET", "POST"])
def sudo(request: AuthenticatedRequest) -> HttpResponse:
    """Confirm the password (and second factor) to enter sudo mode for ten minutes."""
    user = request.user
    needs_token = twofactor.has_two_factor(user)
    form = SudoForm(request.POST or None, needs_token=needs_token)
    if request.method == "POST" and form.is_valid():
        from django.contrib.auth import authenticate

        # Through authenticate(), so django-axes counts failures here like at log-in.
        checked = authenticate(request, username=user.email, password=form.cleaned_data["password"])
        if checked is None or checked.pk != user.pk:
            form.add_error("password", "That password is not right.")
            audit_request(request, owner=user, action=Action.SUDO_FAILED)
        elif needs_token:
            device = twofactor.verify_second_factor(user, form.cleaned_data.get("token", ""))
            if device is None:
                _second_factor_failed(request, user)
                form.add_error("token", "That code is not right, or it was already used.")
            else:
                otp_login(request, device)
                if isinstance(device, RecoveryCodeDevice):
                    _recovery_code_used(request, user, device)
        if not form.errors:
            sudo_grant(request)
            audit_request(request, owner=user, actor=user, action=Action.SUDO_CONFIRMED)
            return HttpResponseRedirect(_safe_next(request, default="accounts:settings"))
    return render(
        request,
        "accounts/sudo.html",
        {"form": form, "next": request.GET.get("next", "")},
        status=400 if form.errors else 200,
    )


# --- two-factor ---------------------------------------------------------------------------


@sensitive_variables("svg", "seed")
@login_required
@require_sudo
@never_cache
@require_http_methods(["GET", "POST"])
def two_factor_setup(request: AuthenticatedRequest) -> HttpResponse:
    """Scan the QR code, type a code: 2FA is on and ten recovery codes are shown once."""
    user = request.user
    if twofactor.has_two_factor(user):
        messages.info(request, "Two-factor authentication is already on.")
        return redirect("accounts:settings")
    device = twofactor.totp_device_start(user=user)
    form = TotpConfirmForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        codes = twofactor.totp_device_confirm(
            user=user,
            device=device,
            token=form.cleaned_data["token"],
            ip_address=client_ip(request),
        )
        if codes is not None:
            otp_login(request, device)
            return render(
                request,
                "accounts/recovery_codes.html",
                {"codes": codes, "next": _safe_next(request, default="accounts:settings")},
            )
        form.add_error(
            "token", "That code is not right. Check the time on your phone and try again."
        )
    svg, seed = twofactor.totp_setup_details(device)
    return render(
        request,
        "accounts/two_factor_setup.html",
        {"form": form, "qr_svg": svg, "seed": seed, "next": request.GET.get("next", "")},
        status=400 if form.errors else 200,
    )


@login_required
@require_sudo
@require_POST
def two_factor_disable(request: AuthenticatedRequest) -> HttpResponse:
    if request.user.is_staff:
        messages.error(request, "Operators must keep two-factor authentication on.")
        return redirect("accounts:settings")
    twofactor.two_factor_disable(user=request.user, ip_address=client_ip(request))
    messages.success(request, "Two-factor authentication is off.")
    return redirect("accounts:settings")


@never_cache
@login_required
@require_sudo
@require_POST
def recovery_codes_regenerate(request: AuthenticatedRequest) -> HttpResponse:
    if not twofactor.has_two_factor(request.user):
        raise Http404("Two-factor authentication is off.")
    codes = twofactor.recovery_codes_create(user=request.user)
    audit_request(
        request, owner=request.user, actor=request.user, action=Action.RECOVERY_CODES_CREATED
    )
    return render(
        request,
        "accounts/recovery_codes.html",
        {"codes": codes, "next": reverse("accounts:settings")},
    )


@never_cache
@sensitive_post_parameters("token")
@login_required
@require_http_methods(["GET", "POST"])
def two_factor_verify(request: AuthenticatedRequest) -> HttpResponse:
    """Verify the second factor in an existing session (operators, before the admin)."""
    user = request.user
    if not twofactor.has_two_factor(user):
        return redirect(
            f"{reverse('accounts:two_factor_setup')}?{urlencode({'next': _safe_next(request)})}"
        )
    if not AxesProxyHandler.is_allowed(request, {"username": user.email}):
        return locked_out(request, None, {"username": user.email})
    form = OtpTokenForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        device = twofactor.verify_second_factor(user, form.cleaned_data["token"])
        if device is not None:
            otp_login(request, device)
            if isinstance(device, RecoveryCodeDevice):
                _recovery_code_used(request, user, device)
            return HttpResponseRedirect(_safe_next(request))
        _second_factor_failed(request, user)
        form.add_error("token", "That code is not right, or it was already used.")
    return render(
        request,
        "accounts/login_verify.html",
        {"form": form, "next": request.GET.get("next", "")},
        status=400 if form.errors else 200,
    )


def admin_login(request: HttpRequest) -> HttpResponse:
    """/admin/login/: the site's own log-in (with its second factor), then the admin."""
    next_url = request.GET.get("next") or reverse("admin:index")
    if not request.user.is_authenticated:
        return redirect(f"{reverse('accounts:login')}?{urlencode({'next': next_url})}")
    if not request.user.is_staff:
        raise PermissionDenied("This page is for operators.")
    return redirect(reverse("admin:index"))


# --- e-mail, sessions, security log, export, deletion -----------------------------------------


@login_required
@require_sudo
@require_http_methods(["GET", "POST"])
def email_change(request: AuthenticatedRequest) -> HttpResponse:
    form = EmailChangeForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        email = form.cleaned_data["email"]
        try:
            email_change_request(user=request.user, email=email, request=request)
        except AccountError as error:
            form.add_error("email", str(error))
        else:
            # SECURITY: the same answer whether or not another account uses the address.
            messages.success(
                request,
                f"We sent a confirmation link to {email}. Open it to finish the change; "
                "until then, log in with your current address.",
            )
            return redirect("accounts:settings")
    return render(request, "accounts/email_change.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def email_confirm(request: AuthenticatedRequest, token: str) -> HttpResponse:
    """The confirmation link: GET shows the new address, POST changes to it."""
    try:
        new = email_change_pending(user=request.user, token=token)
        if request.method == "POST":
            email_change_confirm(user=request.user, token=token, request=request)
            messages.success(request, "Your email address was changed. Use it to log in.")
            return redirect("accounts:settings")
    except AccountError as error:
        return render(
            request, "accounts/email_change_confirm.html", {"error": str(error)}, status=400
        )
    return render(request, "accounts/email_change_confirm.html", {"email": new})


@login_required
@require_POST
def session_revoke(request: AuthenticatedRequest, session_id: object) -> HttpResponse:
    row = get_object_or_404(UserSession.objects.for_owner(request.user), pk=session_id)
    if row.session_key == request.session.session_key:
        messages.error(request, "That is this session: use Log out instead.")
    else:
        session_end(row=row, request=request)
        messages.success(request, "That session was signed out.")
    return redirect("accounts:settings")


@login_required
@require_POST
def sessions_revoke_others(request: AuthenticatedRequest) -> HttpResponse:
    ended = sessions_end_others(user=request.user, keep_session_key=request.session.session_key)
    audit_request(
        request,
        owner=request.user,
        actor=request.user,
        action=Action.SESSION_ENDED,
        details={"other_sessions_ended": ended},
    )
    messages.success(request, f"Signed out {ended} other session{pluralize(ended)}.")
    return redirect("accounts:settings")


@login_required
@require_GET
def security_log(request: AuthenticatedRequest) -> HttpResponse:
    form = SecurityLogFilterForm(request.GET or None)
    # No select_related("actor"): the owner's page never shows who an operator was.
    events = AuditEvent.objects.for_owner(request.user)
    if form.is_valid():
        category = form.cleaned_data.get("category")
        if category == "operator":
            events = events.filter(by_operator=True)
        elif category:
            _label, prefixes = AUDIT_CATEGORIES[category]
            from django.db.models import Q

            condition = Q()
            for prefix in prefixes:
                condition |= Q(action__startswith=prefix)
            events = events.filter(condition)
        if form.cleaned_data.get("since"):
            events = events.filter(created_at__date__gte=form.cleaned_data["since"])
        if form.cleaned_data.get("until"):
            events = events.filter(created_at__date__lte=form.cleaned_data["until"])
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "accounts/security_log.html",
        {"form": form, "page": page, "query": query.urlencode()},
    )
