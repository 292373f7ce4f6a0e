"""The user's own export and deletion pages (Settings → Export your data, Delete my account)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_http_methods

from accounts.http import AuthenticatedRequest
from accounts.sudo import require_sudo
from privacy import exports, services
from privacy.forms import AccountDeleteForm
from privacy.models import AccountExport


@login_required
@require_http_methods(["GET", "POST"])
def export_list(request: AuthenticatedRequest) -> HttpResponse:
    if request.method == "POST":
        try:
            exports.account_export_request(user=request.user, request=request)
        except exports.ExportError as error:
            messages.error(request, str(error))
        else:
            messages.success(request, "Your export is being prepared.")
        return redirect("privacy:export")
    exports.account_exports_expire()
    items = AccountExport.objects.for_owner(request.user)[:10]
    return render(request, "privacy/export.html", {"exports": items})


@login_required
@require_GET
def export_status(request: AuthenticatedRequest, export_id: object) -> HttpResponse:
    """htmx: one export's row, polling itself while it is being prepared."""
    export = get_object_or_404(AccountExport.objects.for_owner(request.user), pk=export_id)
    return render(request, "privacy/_export_row.html", {"export": export})


@never_cache
@login_required
@require_GET
def export_download(request: AuthenticatedRequest, export_id: object) -> HttpResponse:
    export = get_object_or_404(AccountExport.objects.for_owner(request.user), pk=export_id)
    try:
        data = exports.account_export_take(export=export, request=request)
    except exports.ExportError as error:
        messages.error(request, str(error))
        return redirect("privacy:export")
    response = HttpResponse(data, content_type="application/zip")
    stamp = export.created_at.strftime("%Y%m%d")
    response["Content-Disposition"] = f'attachment; filename="byok-export-{stamp}.zip"'
    return response


@login_required
@require_sudo
@require_http_methods(["GET", "POST"])
def account_delete(request: AuthenticatedRequest) -> HttpResponse:
    form = AccountDeleteForm(request.POST or None, email=request.user.email)
    if request.method == "POST" and form.is_valid():
        user = request.user
        logout(request)
        services.account_delete(user=user)
        messages.success(request, "Your account and everything in it were deleted.")
        return redirect("home")
    return render(request, "privacy/delete.html", {"form": form})
