"""Consumer-facing pages: hosted and embedded signup, and confirmation.

Thin views: parse the request, call one operation in ``audiences.consent``,
present a response that never reveals the address's state.
"""

from __future__ import annotations

import logging
from typing import cast
from urllib.parse import urlencode

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import translation
from django.views.decorators.cache import never_cache
from django.views.decorators.clickjacking import xframe_options_exempt
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from audiences import consent, links, ratelimit
from audiences.forms import SignupFormForm, render_stamp
from audiences.models import Audience, ConsentEvent, SignupForm

log = logging.getLogger(__name__)


def _signup_form(brand_slug: str, form_slug: str) -> SignupForm:
    """An active form that still offers at least one live audience, or 404."""
    return get_object_or_404(
        SignupForm.objects.select_related("brand").filter(audiences__archived_at__isnull=True).distinct(),
        brand__slug=brand_slug,
        slug=form_slug,
        is_active=True,
    )


def evidence_from(request: HttpRequest, source: ConsentEvent.Source) -> consent.Evidence:
    return consent.Evidence(
        actor=ConsentEvent.Actor.CONSUMER,
        source=source,
        ip=ratelimit.client_ip(request),
        user_agent=request.headers.get("User-Agent", ""),
    )


def _frame_headers(response: HttpResponse, form: SignupForm) -> HttpResponse:
    """Let the form's allowed origins (and only them) frame the iframe variant."""
    ancestors = " ".join(["'self'", *form.origins])
    response["Content-Security-Policy"] = f"frame-ancestors {ancestors}"
    return response


def _render_signup(
    request: HttpRequest, form: SignupForm, bound: SignupFormForm | None, *, embed: bool
) -> HttpResponse:
    wording = form.current_wording()
    page = bound or SignupFormForm(
        signup_form=form, initial={"ts": render_stamp(form), "wording_version": wording.version}
    )
    if bound is not None:
        # A re-rendered form gets a fresh stamp; its age is measured from now.
        data = cast(QueryDict, page.data).copy()
        data["ts"] = render_stamp(form)
        data["wording_version"] = str(wording.version)
        page.data = data
    with translation.override(form.brand.default_language):
        response = render(
            request,
            "audiences/signup.html",
            {
                "signup_form": form,
                "brand": form.brand,
                "form": page,
                "wording": wording,
                "embed": embed,
                "action": reverse("audiences:signup", args=[form.brand.slug, form.slug]),
            },
            status=400 if bound is not None else 200,
        )
    return _frame_headers(response, form) if embed else response


def _thanks_url(form: SignupForm, *, embed: bool) -> str:
    if form.thank_you_url and not embed:
        return form.thank_you_url
    url = reverse("audiences:thanks", args=[form.brand.slug, form.slug])
    return f"{url}?{urlencode({'embed': 1})}" if embed else url


def _within_limits(request: HttpRequest, form: SignupForm) -> bool:
    ip = ratelimit.client_ip(request) or "unknown"
    per_ip = ratelimit.hit("signup-ip", ip, limit=settings.SIGNUP_LIMIT_PER_IP_PER_HOUR, window_seconds=3600)
    per_form = ratelimit.hit(
        "signup-form", str(form.pk), limit=settings.SIGNUP_LIMIT_PER_FORM_PER_MINUTE, window_seconds=60
    )
    return per_ip and per_form


@csrf_exempt  # Cross-origin posts from embedded snippets carry no CSRF cookie: origins are checked instead.
@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest, brand_slug: str, form_slug: str) -> HttpResponse:
    form = _signup_form(brand_slug, form_slug)
    embed = request.POST.get("embed") == "iframe"
    if request.method == "GET":
        return _render_signup(request, form, None, embed=False)

    origin = request.headers.get("Origin", "").rstrip("/")
    # Our own origins: SITE_URL's, and the one this request was served on
    # (a host ALLOWED_HOSTS accepted, e.g. localhost next to 127.0.0.1).
    own = {settings.SITE_ORIGIN, f"{request.scheme}://{request.get_host()}"}
    cross_origin = bool(origin) and origin not in own
    if cross_origin and origin not in form.origins:
        log.warning("signup refused: origin %r not allowed for form %s", origin, form.pk)
        return render(request, "audiences/origin_refused.html", {"brand": form.brand, "origin": origin}, status=403)

    bound = SignupFormForm(request.POST, signup_form=form)
    if not bound.is_valid():
        return _render_signup(request, form, bound, embed=embed)

    # Refusals below still get the neutral answer: a bot learns nothing.
    if bound.is_bot:
        log.info("signup refused: honeypot filled, form=%s", form.pk)
    elif bound.filled_too_fast(cross_origin=cross_origin):
        log.info("signup refused: filled too fast or without a stamp, form=%s", form.pk)
    elif not _within_limits(request, form):
        log.warning("signup refused: rate limit, form=%s ip=%s", form.pk, ratelimit.client_ip(request))
    else:
        source = ConsentEvent.Source.EMBED if cross_origin or embed else ConsentEvent.Source.FORM
        outcome = consent.request_subscription(
            form=form,
            email=bound.cleaned_data["email"],
            name=bound.cleaned_data.get("name", ""),
            audiences=bound.cleaned_data["audiences"],
            wording_version=bound.cleaned_data.get("wording_version"),
            evidence=evidence_from(request, source),
        )
        log.info("signup form=%s outcome=%s", form.pk, outcome)
    return HttpResponseRedirect(_thanks_url(form, embed=embed), status=303)


@xframe_options_exempt
@require_http_methods(["GET"])
def signup_embed(request: HttpRequest, brand_slug: str, form_slug: str) -> HttpResponse:
    """The iframe variant: the same form without the page chrome."""
    form = _signup_form(brand_slug, form_slug)
    return _render_signup(request, form, None, embed=True)


@xframe_options_exempt
@require_http_methods(["GET"])
def thanks(request: HttpRequest, brand_slug: str, form_slug: str) -> HttpResponse:
    form = _signup_form(brand_slug, form_slug)
    embed = request.GET.get("embed") == "1"
    with translation.override(form.brand.default_language):
        response = render(request, "audiences/thanks.html", {"brand": form.brand, "embed": embed})
    return _frame_headers(response, form) if embed else response


def _link_error(request: HttpRequest, token: str, *, expired: bool) -> HttpResponse:
    """A clear 4xx page offering to sign up again (on the brand's forms, when the token names a person)."""
    subscriber_id = token.partition(".")[0]
    forms: list[SignupForm] = []
    if subscriber_id.isdigit():
        forms = list(
            SignupForm.objects.select_related("brand")
            .filter(brand__subscribers__pk=int(subscriber_id), is_active=True)
            .order_by("title")[:3]
        )
    return render(
        request, "audiences/link_invalid.html", {"expired": expired, "forms": forms}, status=410 if expired else 400
    )


@never_cache
@require_http_methods(["GET", "POST"])
def confirm(request: HttpRequest, token: str) -> HttpResponse:
    """GET shows one button and changes nothing (scanners fetch links); POST confirms."""
    try:
        link = links.read_token(links.Purpose.CONFIRM, token)
    except links.InvalidLink as error:
        return _link_error(request, token, expired=isinstance(error, links.ExpiredLink))
    subscriber = link.subscriber
    audience_ids = [int(a) for a in link.payload.get("a", [])]
    audiences = list(Audience.objects.filter(brand=subscriber.brand, pk__in=audience_ids).order_by("name"))
    context = {"brand": subscriber.brand, "subscriber": subscriber, "audiences": audiences}
    with translation.override(subscriber.language):
        if request.method == "GET":
            return render(request, "audiences/confirm.html", context)
        try:
            outcome = consent.confirm(
                subscriber=subscriber,
                audience_ids=audience_ids,
                evidence=evidence_from(request, ConsentEvent.Source.EMAIL_LINK),
            )
        except consent.ConsentRefused:
            return render(request, "audiences/confirm_refused.html", context, status=409)
        if outcome == consent.Outcome.NOTHING_TO_CONFIRM:
            return _link_error(request, token, expired=True)
        return render(request, "audiences/confirmed.html", {**context, "already": outcome != consent.Outcome.CONFIRMED})
