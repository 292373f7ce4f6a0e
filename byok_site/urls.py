from django.contrib import admin
from django.urls import include, path

from byok_site import views

admin.site.site_header = "BYOK operator"
admin.site.site_title = "BYOK operator"
admin.site.index_title = "Operations"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("keys/", include("keys.urls")),
    path("chat/", include("chat.urls")),
    path("admin/", admin.site.urls),
]
