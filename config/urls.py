from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import include, path

from audiences.views.dashboard import home, team
from config import views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    path("robots.txt", views.robots, name="robots"),
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("webhooks/anymail/", include("campaigns.webhook_urls")),
    path("dashboard/", home.picker, name="dashboard"),
    path("invite/<str:token>/", team.invitation, name="invitation"),
    path("b/<slug:brand_slug>/", include("audiences.dashboard_urls")),
    path("", include("audiences.urls")),
]

if settings.DEBUG and settings.DEV_OUTBOX_ENABLED:
    urlpatterns += [path("dev/outbox/", include("campaigns.outbox_urls"))]
