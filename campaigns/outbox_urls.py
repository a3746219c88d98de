from __future__ import annotations

from django.urls import path

from campaigns import outbox_views

app_name = "outbox"

urlpatterns = [
    path("", outbox_views.index, name="index"),
    path("clear/", outbox_views.clear, name="clear"),
    path("<str:key>/", outbox_views.detail, name="detail"),
    path("<str:key>/html/", outbox_views.html_part, name="html"),
    path("<str:key>/raw/", outbox_views.raw, name="raw"),
]
