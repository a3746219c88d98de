from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def site(request: HttpRequest) -> dict[str, object]:
    return {"SITE_NAME": settings.SITE_NAME, "DEV_OUTBOX_ENABLED": settings.DEBUG and settings.DEV_OUTBOX_ENABLED}
