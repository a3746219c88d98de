"""config.urls plus the dev outbox, which config.urls mounts only when DEBUG and EMAIL_URL is unset."""

from __future__ import annotations

from django.urls import include, path

from config.urls import urlpatterns as site_urlpatterns

urlpatterns = [*site_urlpatterns, path("dev/outbox/", include("campaigns.outbox_urls"))]
