"""Dev outbox pages: only mounted while DEBUG is on and EMAIL_URL is unset."""

from __future__ import annotations

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.clickjacking import xframe_options_sameorigin
from django.views.decorators.http import require_GET, require_POST

from campaigns import outbox


def _message(key: str) -> outbox.OutboxMessage:
    message = outbox.read_one(settings.DEV_OUTBOX_DIR, key)
    if message is None:
        raise Http404("no such message")
    return message


@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "campaigns/outbox/index.html", {"messages_": outbox.read_all(settings.DEV_OUTBOX_DIR)})


@require_GET
def detail(request: HttpRequest, key: str) -> HttpResponse:
    return render(request, "campaigns/outbox/detail.html", {"m": _message(key)})


@xframe_options_sameorigin
@require_GET
def html_part(request: HttpRequest, key: str) -> HttpResponse:
    """The HTML part as its own document, sandboxed: no scripts; links open in the whole tab."""
    html = _message(key).html
    response = HttpResponse('<base target="_top">' + html, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = "sandbox allow-top-navigation-by-user-activation allow-popups"
    return response


@require_GET
def raw(request: HttpRequest, key: str) -> HttpResponse:
    return HttpResponse(_message(key).message.as_bytes(), content_type="text/plain; charset=utf-8")


@require_POST
def clear(request: HttpRequest) -> HttpResponse:
    outbox.clear(settings.DEV_OUTBOX_DIR)
    return redirect("outbox:index")
