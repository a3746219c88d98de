"""The preference centre, the unsubscribe page and RFC 8058 one-click unsubscribe.

The person's signed link is their authority: no account, no password. GET
never changes anything (mail scanners fetch links); every change is a POST
that calls one operation in ``audiences.consent``.
"""

from __future__ import annotations

import json
import logging

from django.conf import settings
from django.db.models import Q
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.translation import gettext as _
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from audiences import consent, links, ratelimit
from audiences.export import export_data
from audiences.forms import ManageLinkForm, PreferencesForm
from audiences.models import Audience, Brand, ConsentEvent, Subscriber, Subscription
from audiences.views.signup import evidence_from

log = logging.getLogger(__name__)

PAUSE_CHOICES = {"pause30": 30, "pause90": 90}


def _invalid(request: HttpRequest, error: links.InvalidLink) -> HttpResponse:
    expired = isinstance(error, links.ExpiredLink)
    return render(
        request,
        "audiences/preferences/link_invalid.html",
        {"expired": expired},
        status=410 if expired else 400,
    )


def _shown_audiences(subscriber: Subscriber) -> list[Audience]:
    """Every public audience of the brand, plus any other the person is on."""
    mine = subscriber.subscriptions.exclude(status=Subscription.Status.INACTIVE).values("audience_id")
    return list(
        Audience.objects.filter(brand_id=subscriber.brand_id, archived_at__isnull=True)
        .filter(Q(is_public=True) | Q(pk__in=mine))
        .order_by("name")
    )


# --- Unsubscribe ------------------------------------------------------------------


@never_cache
@csrf_exempt  # RFC 8058: mailbox providers POST with no cookie, session or CSRF token.
@require_http_methods(["GET", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    """GET: a page with one button. POST ``List-Unsubscribe=One-Click``: unsubscribe, 200, never a redirect.

    POST ``scope=list|all`` (the page's buttons): unsubscribe and show the result.
    """
    one_click = request.method == "POST" and request.POST.get("List-Unsubscribe") == "One-Click"
    try:
        link = links.read_token(links.Purpose.UNSUBSCRIBE, token)
    except links.InvalidLink as error:
        if request.method == "POST":
            return HttpResponseBadRequest("Invalid or expired unsubscribe link.\n", content_type="text/plain")
        return _invalid(request, error)
    subscriber = link.subscriber
    scoped = link.audience_ids or None  # a link about no audience means everything
    if one_click:
        left = consent.unsubscribe(
            subscriber=subscriber,
            audience_ids=scoped,
            evidence=evidence_from(request, ConsentEvent.Source.ONE_CLICK),
        )
        log.info("one-click unsubscribe subscriber=%s left=%s", subscriber.pk, len(left))
        return HttpResponse("You are unsubscribed.\n", content_type="text/plain; charset=utf-8")

    audiences = list(Audience.objects.filter(brand_id=subscriber.brand_id, pk__in=link.audience_ids).order_by("name"))
    context = {"brand": subscriber.brand, "subscriber": subscriber, "audiences": audiences}
    with translation.override(subscriber.language):
        if request.method == "GET":
            return render(request, "audiences/preferences/unsubscribe.html", context)
        scope = request.POST.get("scope")
        if scope not in {"list", "all"}:
            return HttpResponseBadRequest(
                "Expected List-Unsubscribe=One-Click or scope=list|all.\n", content_type="text/plain"
            )
        left = consent.unsubscribe(
            subscriber=subscriber,
            audience_ids=None if scope == "all" else scoped,
            evidence=evidence_from(request, ConsentEvent.Source.EMAIL_LINK),
        )
        everything = scope == "all" or scoped is None
        return render(
            request,
            "audiences/preferences/unsubscribed.html",
            {
                **context,
                "audiences": left or audiences,  # repeated: what the link was about
                "everything": everything,
                "manage_url": links.manage_url(subscriber),
            },
        )


# --- Preference centre -------------------------------------------------------------


def _centre(request: HttpRequest, subscriber: Subscriber, form: PreferencesForm | None = None) -> HttpResponse:
    shown = _shown_audiences(subscriber)
    active = set(
        subscriber.subscriptions.filter(status=Subscription.Status.ACTIVE).values_list("audience_id", flat=True)
    )
    if form is None:
        form = PreferencesForm(
            shown=shown,
            initial={
                "audiences": [a.pk for a in shown if a.pk in active],
                "frequency": subscriber.frequency,
                "name": subscriber.name,
                "language": subscriber.language,
            },
        )
    context = {
        "brand": subscriber.brand,
        "subscriber": subscriber,
        "form": form,
        "shown": shown,
        "active": active,
        "can_rejoin": subscriber.status in {Subscriber.Status.CONFIRMED, Subscriber.Status.UNSUBSCRIBED},
        "blocked": subscriber.status == Subscriber.Status.BLOCKED,
        "paused": subscriber.paused_until is not None and subscriber.paused_until > timezone.now(),
        "saved": request.GET.get("saved"),
    }
    return render(request, "audiences/preferences/centre.html", context, status=400 if form.errors else 200)


def _save(request: HttpRequest, subscriber: Subscriber) -> HttpResponse | None:
    """Apply the main form: audiences off, then on, then profile. None when the form is invalid."""
    shown = _shown_audiences(subscriber)
    form = PreferencesForm(request.POST, shown=shown)
    if not form.is_valid():
        return _centre(request, subscriber, form)
    evidence = evidence_from(request, ConsentEvent.Source.PREFERENCE_CENTRE)
    wanted = {a.pk for a in form.cleaned_data["audiences"]}
    current = set(
        subscriber.subscriptions.exclude(status=Subscription.Status.INACTIVE).values_list("audience_id", flat=True)
    )
    leaving = [a.pk for a in shown if a.pk in current and a.pk not in wanted]
    joining = [a.pk for a in shown if a.pk in wanted and a.pk not in current]
    if leaving:
        consent.unsubscribe(subscriber=subscriber, audience_ids=leaving, evidence=evidence)
    if joining:
        try:
            consent.resubscribe(subscriber=subscriber, audience_ids=joining, evidence=evidence)
        except consent.ConsentRefused:
            form.add_error("audiences", _("Confirm your address first: use the link in your confirmation email."))
            return _centre(request, subscriber, form)
    consent.update_profile(
        subscriber=subscriber,
        evidence=evidence,
        name=form.cleaned_data["name"],
        language=form.cleaned_data["language"],
        frequency=form.cleaned_data["frequency"],
    )
    return None


def _export(subscriber: Subscriber) -> HttpResponse:
    body = json.dumps(export_data(subscriber=subscriber), indent=2, ensure_ascii=False)
    response = HttpResponse(body, content_type="application/json; charset=utf-8")
    filename = f"{subscriber.brand.slug}-my-data.json"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


@never_cache
@require_http_methods(["GET", "POST"])
def preferences(request: HttpRequest, token: str) -> HttpResponse:
    try:
        link = links.read_token(links.Purpose.MANAGE, token)
    except links.InvalidLink as error:
        return _invalid(request, error)
    subscriber = link.subscriber
    with translation.override(subscriber.language):
        if request.method == "GET":
            return _centre(request, subscriber)
        action = request.POST.get("action", "")
        evidence = evidence_from(request, ConsentEvent.Source.PREFERENCE_CENTRE)
        blocked = subscriber.status == Subscriber.Status.BLOCKED
        if action == "export":
            return _export(subscriber)
        if action in {"erase", "block"}:
            return render(
                request, f"audiences/preferences/confirm_{action}.html", {"brand": subscriber.brand, "token": token}
            )
        if blocked and action != "":
            return _centre(request, subscriber)
        if action == "save":
            invalid = _save(request, subscriber)
            if invalid is not None:
                return invalid
        elif action in PAUSE_CHOICES:
            consent.pause(subscriber=subscriber, days=PAUSE_CHOICES[action], evidence=evidence)
        elif action == "resume":
            consent.pause(subscriber=subscriber, days=None, evidence=evidence)
        elif action == "unsubscribe_all":
            consent.unsubscribe(subscriber=subscriber, audience_ids=None, evidence=evidence)
        else:
            return HttpResponseBadRequest("Unknown action.\n", content_type="text/plain")
    url = reverse("audiences:preferences", kwargs={"token": token})
    return HttpResponseRedirect(f"{url}?saved={action}", status=303)


@never_cache
@require_http_methods(["POST"])
def preferences_confirmed(request: HttpRequest, token: str, action: str) -> HttpResponse:
    """The second step of "never contact me again" and "delete me"."""
    try:
        link = links.read_token(links.Purpose.MANAGE, token)
    except links.InvalidLink as error:
        return _invalid(request, error)
    subscriber = link.subscriber
    brand = subscriber.brand
    evidence = evidence_from(request, ConsentEvent.Source.PREFERENCE_CENTRE)
    with translation.override(subscriber.language):
        if action == "block":
            consent.block(subscriber=subscriber, evidence=evidence)
            return render(request, "audiences/preferences/blocked.html", {"brand": brand})
        if action == "erase":
            consent.erase(subscriber=subscriber, evidence=evidence)
            return render(request, "audiences/preferences/erased.html", {"brand": brand})
    return HttpResponseBadRequest("Unknown action.\n", content_type="text/plain")


# --- "Manage my subscription": a fresh link by email ------------------------------------


@require_http_methods(["GET", "POST"])
def manage_request(request: HttpRequest, brand_slug: str) -> HttpResponse:
    brand = get_object_or_404(Brand, slug=brand_slug)
    with translation.override(brand.default_language):
        if request.method == "GET":
            return render(
                request, "audiences/preferences/manage_request.html", {"brand": brand, "form": ManageLinkForm()}
            )
        form = ManageLinkForm(request.POST)
        if not form.is_valid():
            return render(
                request, "audiences/preferences/manage_request.html", {"brand": brand, "form": form}, status=400
            )
        ip = ratelimit.client_ip(request) or "unknown"
        if ratelimit.hit("manage-ip", ip, limit=settings.SIGNUP_LIMIT_PER_IP_PER_HOUR, window_seconds=3600):
            consent.request_manage_link(brand=brand, email=form.cleaned_data["email"])
        else:
            log.warning("manage link refused: rate limit ip=%s", ip)
    return HttpResponseRedirect(reverse("audiences:manage_sent", kwargs={"brand_slug": brand.slug}), status=303)


@require_http_methods(["GET"])
def manage_sent(request: HttpRequest, brand_slug: str) -> HttpResponse:
    brand = get_object_or_404(Brand, slug=brand_slug)
    with translation.override(brand.default_language):
        return render(request, "audiences/preferences/manage_sent.html", {"brand": brand})
