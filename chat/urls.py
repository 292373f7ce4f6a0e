from django.urls import path

from chat import views

app_name = "chat"

urlpatterns = [
    path("", views.chat_home, name="home"),
    path("models/", views.model_options, name="models"),
    path("search/", views.conversation_search, name="search"),
    path("c/<uuid:conversation_id>/", views.conversation_detail, name="conversation"),
    path("c/<uuid:conversation_id>/send/", views.message_send, name="send"),
    path("c/<uuid:conversation_id>/rename/", views.conversation_rename, name="rename"),
    path("c/<uuid:conversation_id>/archive/", views.conversation_archive, name="archive"),
    path("c/<uuid:conversation_id>/pin/", views.conversation_pin, name="pin"),
    path("c/<uuid:conversation_id>/temporary/", views.conversation_temporary, name="temporary"),
    path("c/<uuid:conversation_id>/settings/", views.conversation_settings, name="settings"),
    path("c/<uuid:conversation_id>/delete/", views.conversation_delete, name="delete"),
    path(
        "c/<uuid:conversation_id>/m/<uuid:message_id>/edit/",
        views.message_edit,
        name="edit",
    ),
    path(
        "c/<uuid:conversation_id>/m/<uuid:message_id>/version/",
        views.branch_switch,
        name="version",
    ),
    path("m/<uuid:message_id>/stream/", views.turn_stream, name="stream"),
    path("m/<uuid:message_id>/cancel/", views.turn_cancel, name="cancel"),
    path("m/<uuid:message_id>/markdown/", views.reply_markdown, name="markdown"),
    path("m/<uuid:message_id>/regenerate/", views.turn_regenerate, name="regenerate"),
    path("m/<uuid:message_id>/continue/", views.turn_continue, name="continue"),
]
