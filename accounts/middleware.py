"""Session bookkeeping and the operator site's second-factor gate."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.http import urlencode

from accounts import services, twofactor


class _SyncAndAsync:
    """Runs in the request's own mode, so the async SSE views stay async under ASGI."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        return self.handle(request)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError

    def handle(self, request: HttpRequest) -> HttpResponse:
        raise NotImplementedError


class SessionActivityMiddleware(_SyncAndAsync):
    """Keeps the signed-in session's row (device, address, last seen) up to date."""

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = await self.get_response(request)
        user = await request.auser()
        if user.is_authenticated and hasattr(request, "session"):
            await sync_to_async(services.session_touch)(request)
        return response

    def handle(self, request: HttpRequest) -> HttpResponse:
        response: HttpResponse = self.get_response(request)
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and hasattr(request, "session"):
            services.session_touch(request)
        return response


class StaffTwoFactorMiddleware(_SyncAndAsync):
    """SECURITY: staff reach /admin/ only with a verified second factor in this session.

    Not yet enrolled: to the enrolment page first (the development operator of `make run`
    goes through it on the first visit). Enrolled but logged in before verifying (or a
    session from before 2FA was switched on): to the verification step.
    """

    prefix = "/admin/"

    def applies(self, request: HttpRequest) -> bool:
        return request.path.startswith(self.prefix)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        if self.applies(request):
            gate = await sync_to_async(self.gate)(request)
            if gate is not None:
                return gate
        response: HttpResponse = await self.get_response(request)
        return response

    def handle(self, request: HttpRequest) -> HttpResponse:
        gate = self.gate(request) if self.applies(request) else None
        if gate is not None:
            return gate
        response: HttpResponse = self.get_response(request)
        return response

    def gate(self, request: HttpRequest) -> HttpResponse | None:
        """A redirect to the second-factor step, or None to go on."""
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
        return None
