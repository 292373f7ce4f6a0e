from django.urls import path

from usage import views

app_name = "usage"

urlpatterns = [
    path("", views.usage_home, name="home"),
    path("day/<str:day>/", views.usage_day, name="day"),
    path("export.csv", views.usage_export, name="export"),
    path("key/<uuid:key_id>/", views.key_usage, name="key"),
    path("caps/", views.caps, name="caps"),
    path("caps/<str:scope>/set/", views.cap_set, name="cap_set"),
    path("caps/<str:scope>/remove/", views.cap_remove, name="cap_remove"),
    path("preferences/", views.preferences_set, name="preferences"),
]
