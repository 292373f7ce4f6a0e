"""A URLconf with one deliberately leaky page, to prove the sweeps catch it."""

from django.http import HttpResponse
from django.urls import include, path

from accounts.models import User


def leaky(request, key_id):  # shows alice's profile to whoever asks: the bug to catch
    return HttpResponse(User.objects.get(email="alice@example.com").display_name)


urlpatterns = [
    path("", include("byok_site.urls")),
    path("leak/<uuid:key_id>/", leaky, name="leak"),
]
