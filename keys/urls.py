from django.urls import path, re_path

from keys import views

app_name = "keys"

urlpatterns = [
    path("", views.key_list, name="list"),
    path("add/", views.key_add, name="add"),
    path("add/endpoint/", views.key_add_endpoint_field, name="add_endpoint"),
    path("<uuid:key_id>/", views.key_detail, name="detail"),
    path("<uuid:key_id>/status/", views.key_status, name="status"),
    path("<uuid:key_id>/verify/", views.key_verify, name="verify"),
    path("<uuid:key_id>/rename/", views.key_rename, name="rename"),
    path("<uuid:key_id>/expiry/", views.key_set_expiry, name="expiry"),
    path("<uuid:key_id>/replace/", views.key_replace, name="replace"),
    re_path(
        r"^(?P<key_id>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
        r"/move/(?P<direction>up|down)/$",
        views.key_move,
        name="move",
    ),
    path("<uuid:key_id>/revoke/", views.key_revoke, name="revoke"),
    path("<uuid:key_id>/delete/", views.key_delete, name="delete"),
]
