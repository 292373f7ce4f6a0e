from django.contrib import admin
from django.urls import include, path

from accounts import views as account_views
from byok_site import views

admin.site.site_header = "BYOK operator"
admin.site.site_title = "BYOK operator"
admin.site.index_title = "Operations"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("accounts/", include("accounts.urls")),
    path("accounts/", include("privacy.urls")),
    path("keys/", include("keys.urls")),
    path("chat/", include("chat.urls")),
    path("usage/", include("usage.urls")),
    # SECURITY: the admin's own login form would skip the second factor; send it to ours.
    path("admin/login/", account_views.admin_login, name="admin_login"),
    path("admin/", admin.site.urls),
]
