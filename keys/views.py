from __future__ import annotations

from datetime import timedelta
from typing import Literal

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.debug import sensitive_post_parameters, sensitive_variables
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from accounts.http import AuthenticatedRequest
from accounts.models import AuditEvent
from accounts.services import client_ip
from accounts.sudo import require_sudo
from keys import services
from keys.forms import (
    ProviderKeyAddForm,
    ProviderKeyExpiryForm,
    ProviderKeyRenameForm,
    ProviderKeyReplaceForm,
)
from keys.models import ProviderKey
from keys.services import KeyVaultError, RequestInfo
from providers.catalog import PRESETS

STILL_CHECKING_AFTER = timedelta(seconds=45)


def _info(request: AuthenticatedRequest) -> RequestInfo:
    return RequestInfo(actor=request.user, ip_address=client_ip(request))


def _key_for(request: AuthenticatedRequest, key_id: object) -> ProviderKey:
    return get_object_or_404(ProviderKey.objects.for_owner(request.user), pk=key_id)


def _attach_error(form: forms.Form, error: KeyVaultError) -> None:
    field = error.field if error.field in form.fields else None
    form.add_error(field, error.message)


@login_required
@require_GET
def key_list(request: AuthenticatedRequest) -> HttpResponse:
    keys = list(
        ProviderKey.objects.for_owner(request.user).order_by("preset", "priority", "created_at")
    )
    groups: dict[str, list[ProviderKey]] = {}
    for key in keys:
        groups.setdefault(key.preset, []).append(key)
    return render(request, "keys/list.html", {"keys": keys, "groups": groups})


@sensitive_post_parameters("secret")
@sensitive_variables("form", "data")
@login_required
@require_sudo
@require_http_methods(["GET", "POST"])
def key_add(request: AuthenticatedRequest) -> HttpResponse:
    form = ProviderKeyAddForm(request.POST or None, initial={"preset": request.GET.get("preset")})
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            key = services.provider_key_create(
                owner=request.user,
                preset_slug=data["preset"],
                label=data["label"],
                secret=data["secret"],
                base_url=data["base_url"] or None,
                expires_on=data["expires_on"],
                info=_info(request),
            )
        except KeyVaultError as error:
            _attach_error(form, error)
        else:
            messages.success(
                request,
                f"“{key.label}” is saved and encrypted. Checking it with {key.preset_name}…",
            )
            return redirect("keys:detail", key_id=key.pk)
    preset = PRESETS.get(form["preset"].value() or "")
    return render(request, "keys/add.html", {"form": form, "preset": preset, "presets": PRESETS})


@login_required
@require_GET
def key_add_endpoint_field(request: AuthenticatedRequest) -> HttpResponse:
    """htmx: the base URL field (or the fixed endpoint) for the chosen preset."""
    form = ProviderKeyAddForm(initial={"preset": request.GET.get("preset")})
    preset = PRESETS.get(request.GET.get("preset", ""))
    return render(request, "keys/_endpoint_field.html", {"form": form, "preset": preset})


@login_required
@require_GET
def key_detail(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    return _render_detail(request, _key_for(request, key_id))


def _render_detail(
    request: AuthenticatedRequest,
    key: ProviderKey,
    *,
    rename_form: ProviderKeyRenameForm | None = None,
    expiry_form: ProviderKeyExpiryForm | None = None,
    status: int = 200,
) -> HttpResponse:
    """The key's page, optionally with one of its forms showing errors (status 400)."""
    history = AuditEvent.objects.for_owner(request.user).filter(target_id=str(key.pk))[:50]
    context = {
        "key": key,
        "history": history,
        "rename_form": rename_form or ProviderKeyRenameForm(initial={"label": key.label}),
        "expiry_form": expiry_form or ProviderKeyExpiryForm(initial={"expires_on": key.expires_on}),
        "still_checking": _still_checking(key),
    }
    return render(request, "keys/detail.html", context, status=status)


def _still_checking(key: ProviderKey) -> bool:
    return bool(
        key.status == ProviderKey.Status.CHECKING
        and key.check_requested_at
        and timezone.now() - key.check_requested_at > STILL_CHECKING_AFTER
    )


@login_required
@require_GET
def key_status(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    """htmx: the status badge, which polls itself while the key is being checked (and, on
    the key's page, the "last checked" time next to it)."""
    key = _key_for(request, key_id)
    details = request.GET.get("details") == "1"  # polled from the key's own page
    context = {
        "key": key,
        "still_checking": _still_checking(key),
        "details": details,
        "details_oob": details,
    }
    return render(request, "keys/_status.html", context)


@login_required
@require_POST
def key_verify(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    key = _key_for(request, key_id)
    try:
        services.provider_key_request_check(key=key, info=_info(request))
    except KeyVaultError as error:
        messages.error(request, error.message)
    if request.headers.get("HX-Request"):
        return render(request, "keys/_status.html", {"key": key, "still_checking": False})
    return redirect("keys:detail", key_id=key.pk)


@login_required
@require_POST
def key_rename(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    key = _key_for(request, key_id)
    form = ProviderKeyRenameForm(request.POST)
    if form.is_valid():
        try:
            services.provider_key_rename(
                key=key, label=form.cleaned_data["label"], info=_info(request)
            )
        except KeyVaultError as error:
            _attach_error(form, error)
        else:
            messages.success(request, "Label saved.")
            return redirect("keys:detail", key_id=key.pk)
    key.refresh_from_db()
    return _render_detail(request, key, rename_form=form, status=400)


@login_required
@require_POST
def key_set_expiry(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    key = _key_for(request, key_id)
    form = ProviderKeyExpiryForm(request.POST)
    if form.is_valid():
        try:
            services.provider_key_set_expiry(key=key, expires_on=form.cleaned_data["expires_on"])
        except KeyVaultError as error:
            _attach_error(form, error)
        else:
            messages.success(request, "Expiry saved.")
            return redirect("keys:detail", key_id=key.pk)
    return _render_detail(request, key, expiry_form=form, status=400)


@sensitive_post_parameters("secret")
@sensitive_variables("form")
@login_required
@require_sudo
@require_http_methods(["GET", "POST"])
def key_replace(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    key = _key_for(request, key_id)
    if key.status == ProviderKey.Status.REVOKED:
        raise Http404("A revoked key cannot be reused.")
    form = ProviderKeyReplaceForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            services.provider_key_replace_secret(
                key=key, secret=form.cleaned_data["secret"], info=_info(request)
            )
        except KeyVaultError as error:
            _attach_error(form, error)
        else:
            messages.success(request, "The new secret is saved and encrypted. Checking it…")
            return redirect("keys:detail", key_id=key.pk)
    return render(request, "keys/replace.html", {"key": key, "form": form})


@login_required
@require_POST
def key_move(
    request: AuthenticatedRequest, key_id: object, direction: Literal["up", "down"]
) -> HttpResponse:
    key = _key_for(request, key_id)
    services.provider_key_move(key=key, direction=direction, info=_info(request))
    return redirect("keys:list")


@login_required
@require_sudo
@require_http_methods(["GET", "POST"])
def key_revoke(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    key = _key_for(request, key_id)
    if request.method == "POST":
        services.provider_key_revoke(key=key, info=_info(request))
        messages.success(
            request, f"“{key.label}” is revoked. Revoke it in your provider's console too."
        )
        return redirect("keys:detail", key_id=key.pk)
    return render(request, "keys/confirm.html", {"key": key, "action": "revoke"})


@login_required
@require_sudo
@require_http_methods(["GET", "POST"])
def key_delete(request: AuthenticatedRequest, key_id: object) -> HttpResponse:
    key = _key_for(request, key_id)
    if request.method == "POST":
        label = key.label
        services.provider_key_delete(key=key, info=_info(request))
        messages.success(request, f"“{label}” is deleted.")
        return redirect("keys:list")
    return render(request, "keys/confirm.html", {"key": key, "action": "delete"})
