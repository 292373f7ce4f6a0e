"""Session bookkeeping and the operator site's second-factor gate."""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode

from accounts import services, twofactor


class SessionActivityMiddleware:
    """Keeps the signed-in session's row (device, address, last seen) up to date."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and hasattr(request, "session"):
            services.session_touch(request)
        return response


class StaffTwoFactorMiddleware:
    """SECURITY: staff reach /admin/ only with a verified second factor in this session.

    Not yet enrolled: to the enrolment page first (the development operator of `make run`
    goes through it on the first visit). Enrolled but logged in before verifying (or a
    session from before 2FA was switched on): to the verification step.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.prefix = "/admin/"

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if (
            request.path.startswith(self.prefix)
            and user is not None
            and user.is_authenticated
            and user.is_staff
            and not user.is_verified()
        ):
            query = urlencode({"next": request.get_full_path()})
            if twofactor.has_two_factor(user):
                return HttpResponseRedirect(f"{reverse('accounts:two_factor_verify')}?{query}")
            messages.info(
                request,
                "Operators need two-factor authentication. Set it up to open the operator site.",
            )
            return HttpResponseRedirect(f"{reverse('accounts:two_factor_setup')}?{query}")
        return self.get_response(request)
