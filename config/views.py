"""Site-level views: health check, robots.txt and the landing page."""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from audiences.models import SignupForm
from config.celery import app as celery_app

log = logging.getLogger(__name__)


def _database_ok() -> bool:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except Exception:
        log.exception("health check: database unreachable")
        return False


def _broker_ok() -> bool:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=2)
        return True
    except Exception:
        log.exception("health check: broker unreachable")
        return False


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks = {"database": _database_ok(), "broker": _broker_ok()}
    healthy = all(checks.values())
    body = {"status": "ok" if healthy else "unavailable", **{k: "ok" if v else "down" for k, v in checks.items()}}
    return JsonResponse(body, status=200 if healthy else 503)


@require_GET
def robots(request: HttpRequest) -> HttpResponse:
    # Personal links (confirmation, preferences) are never for crawlers.
    return HttpResponse(
        "User-agent: *\nDisallow: /c/\nDisallow: /u/\nDisallow: /p/\nDisallow: /admin/\n", content_type="text/plain"
    )


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    forms = SignupForm.objects.select_related("brand").filter(is_active=True).order_by("brand__name", "title")
    return render(request, "home.html", {"forms": forms[:20] if settings.DEBUG else []})
