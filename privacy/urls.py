from django.urls import path

from privacy import views

app_name = "privacy"

# Mounted under accounts/ (byok_site/urls.py), next to the rest of the account's pages.
urlpatterns = [
    path("export/", views.export_list, name="export"),
    path("export/<uuid:export_id>/status/", views.export_status, name="export_status"),
    path("export/<uuid:export_id>/download/", views.export_download, name="export_download"),
    path("delete/", views.account_delete, name="delete"),
]
