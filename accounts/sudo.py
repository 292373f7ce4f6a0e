"""Re-authentication ("sudo mode") before dangerous changes.

A session is in sudo mode for `BYOK_SUDO_SECONDS` (ten minutes) after its user entered
their password, and their second factor when they have one: at log-in or on the
confirmation page. `require_sudo` guards a view; `sudo_is_active` lets other apps ask (the
usage app guards raising a spend cap with it).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode

SESSION_KEY = "byok_sudo_until"
SESSION_USER_KEY = "byok_sudo_user"

View = TypeVar("View", bound=Callable[..., HttpResponse])


def sudo_grant(request: HttpRequest) -> None:
    """Start (or extend) sudo mode for the signed-in user of this session."""
    request.session[SESSION_KEY] = time.time() + settings.BYOK_SUDO_SECONDS
    request.session[SESSION_USER_KEY] = str(request.user.pk)


def sudo_end(request: HttpRequest) -> None:
    request.session.pop(SESSION_KEY, None)
    request.session.pop(SESSION_USER_KEY, None)


def sudo_is_active(request: HttpRequest) -> bool:
    """True if this session's user re-authenticated within the last ten minutes."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return False
    until = request.session.get(SESSION_KEY)
    return (
        isinstance(until, int | float)
        and until > time.time()
        and request.session.get(SESSION_USER_KEY) == str(user.pk)
    )


def sudo_url(next_url: str) -> str:
    return f"{reverse('accounts:sudo')}?{urlencode({'next': next_url})}"


def require_sudo(view: View) -> View:
    """Send the user to confirm their password first unless sudo mode is on.

    Put it under `@login_required`. A POST without sudo mode changes nothing: the user
    confirms and comes back to the page (GET) to submit again. htmx requests get an
    HX-Redirect so the whole page moves.
    """

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if sudo_is_active(request):
            return view(request, *args, **kwargs)
        back = request.get_full_path() if request.method == "GET" else _page_for(request)
        target = sudo_url(back)
        if request.headers.get("HX-Request"):
            response = HttpResponse(status=204)
            response["HX-Redirect"] = target
            return response
        return HttpResponseRedirect(target)

    return cast(View, wrapper)


def _page_for(request: HttpRequest) -> str:
    """Where to come back to after a POST was stopped: the page it was sent from."""
    from django.utils.http import url_has_allowed_host_and_scheme

    referer = request.headers.get("Referer", "")
    if referer and url_has_allowed_host_and_scheme(
        referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return referer
    return request.path
