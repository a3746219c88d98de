"""The team's subscriber pages: the searchable list, one person's record and
consent evidence, the team's actions on a person, and the CSV export.

Reading is for every member. Unsubscribing, blocking, erasing and exporting
(personal data leaves the system) are for editors and owners. Every action goes
through the consent operation that owns it, as a team member acting from the
dashboard, and is written to the audit log in the same transaction. There is
deliberately no way to confirm anyone here: only the person's own confirmation
does that.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django import forms
from django.contrib import messages
from django.db import transaction
from django.db.models import Prefetch, prefetch_related_objects
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audiences import audit, consent
from audiences.access import Role, brand_view, current_user, get_for_brand
from audiences.consent import Evidence
from audiences.models import Audience, ConsentEvent, Subscriber, Subscription, Suppression
from audiences.ratelimit import client_ip
from audiences.subscriber_queries import Cursor, Filters, filtered, page, stream_csv, total
from audiences.views.dashboard import csv_download


class FilterForm(forms.Form):
    """The list's search and filters, sent as GET so every view of the list has a URL."""

    # Three characters at least: shorter text cannot use the trigram indexes, and a rare pair of
    # letters would mean reading every subscriber of the brand.
    q = forms.CharField(
        label=gettext_lazy("Search"),
        required=False,
        min_length=3,
        max_length=254,
        help_text=gettext_lazy("At least 3 characters of an email address or a name."),
        error_messages={"min_length": gettext_lazy("Type at least 3 characters to search.")},
    )
    status = forms.ChoiceField(
        label=gettext_lazy("Status"),
        required=False,
        choices=[("", gettext_lazy("Any status")), *Subscriber.Status.choices],
    )
    audience = forms.ModelChoiceField(
        label=gettext_lazy("Subscribed to"),
        required=False,
        queryset=Audience.objects.none(),
        empty_label=gettext_lazy("Any audience"),
    )
    created_from = forms.DateField(
        label=gettext_lazy("Signed up from"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    created_to = forms.DateField(
        label=gettext_lazy("Signed up until"), required=False, widget=forms.DateInput(attrs={"type": "date"})
    )
    source = forms.ChoiceField(
        label=gettext_lazy("Source"),
        required=False,
        choices=[("", gettext_lazy("Any source")), *ConsentEvent.Source.choices],
    )
    after = forms.CharField(required=False, widget=forms.HiddenInput)
    before = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, audiences: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)
        self.fields["audience"].queryset = audiences  # type: ignore[attr-defined]

    def _cursor(self, name: str) -> Cursor | None:
        token = self.cleaned_data.get(name) or ""
        if not token:
            return None
        try:
            return Cursor.decode(token)
        except ValueError:
            raise forms.ValidationError(_("This page link is broken; start again from the first page.")) from None

    def clean_after(self) -> Cursor | None:
        return self._cursor("after")

    def clean_before(self) -> Cursor | None:
        return self._cursor("before")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("created_from"), data.get("created_to")
        if start and end and start > end:
            self.add_error("created_to", _("The end date is before the start date."))
        return data

    def filters(self) -> Filters:
        data = self.cleaned_data
        audience = data.get("audience")
        return Filters(
            q=data.get("q", "").strip(),
            status=data.get("status", ""),
            audience_id=audience.pk if audience else None,
            created_from=data.get("created_from"),
            created_to=data.get("created_to"),
            source=data.get("source", ""),
        )


class EraseForm(forms.Form):
    """Erasure cannot be undone, so the member types the address to say they mean it."""

    email = forms.CharField(label=gettext_lazy("Type the email address to confirm"), max_length=254)

    def __init__(self, *args: Any, subscriber: Subscriber, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.subscriber = subscriber

    def clean_email(self) -> str:
        typed: str = self.cleaned_data["email"].strip().lower()
        if typed != self.subscriber.email:
            raise forms.ValidationError(_("That is not this subscriber's address."))
        return typed


SOURCE_LABELS = dict(ConsentEvent.Source.choices)


def _items(value: Any) -> list[tuple[str, str]]:
    """A JSON value as (key, text) pairs for a definition list; nested values shown as JSON."""
    if not isinstance(value, dict):
        return [] if value in (None, "", [], {}) else [("value", _text(value))]
    return [(str(key), _text(item)) for key, item in sorted(value.items(), key=lambda pair: str(pair[0]))]


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)


def _brand_audiences(request: HttpRequest) -> Any:
    return Audience.objects.filter(brand=request.brand).order_by("name")  # type: ignore[attr-defined]


def _filter_form(request: HttpRequest) -> FilterForm:
    return FilterForm(request.GET, audiences=_brand_audiences(request))


@brand_view()
@require_GET
def subscriber_list(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    form = _filter_form(request)
    if not form.is_valid():
        return render(request, "dashboard/subscribers/list.html", {"form": form, "rows": []}, status=400)
    filters = form.filters()
    result = page(
        filtered(brand=brand, filters=filters),
        after=form.cleaned_data["after"],
        before=form.cleaned_data["before"],
    )
    active = (
        Subscription.objects.filter(status=Subscription.Status.ACTIVE)
        .select_related("audience")
        .order_by("audience__name")
    )
    prefetch_related_objects(result.rows, Prefetch("subscriptions", queryset=active, to_attr="active_subscriptions"))
    for row in result.rows:
        row.source_label = SOURCE_LABELS.get(row.source, row.source)  # type: ignore[attr-defined]
    context = {
        "form": form,
        "rows": result.rows,
        "newer": result.newer.encode() if result.newer else None,
        "older": result.older.encode() if result.older else None,
        "filtered": filters.active,
        "total": None if filters.active else total(brand=brand),
    }
    return render(request, "dashboard/subscribers/list.html", context)


@brand_view()
@require_GET
def subscriber_detail(request: HttpRequest, pk: int) -> HttpResponse:
    subscriber = get_for_brand(Subscriber, request, pk=pk)
    events = list(
        subscriber.consent_events.select_related("actor_user", "signup_form", "wording").order_by("-created_at", "-pk")
    )
    for event in events:
        event.detail_items = _items(event.details)  # type: ignore[attr-defined]
    subscriptions = list(subscriber.subscriptions.select_related("audience").order_by("audience__name"))
    for subscription in subscriptions:
        subscription.source_label = SOURCE_LABELS.get(subscription.source, subscription.source)  # type: ignore[attr-defined]
    context = {
        "subscriber": subscriber,
        "source_label": SOURCE_LABELS.get(subscriber.source, subscriber.source),
        "attributes": _items(subscriber.attributes),
        "subscriptions": subscriptions,
        "events": events,
        "emails": subscriber.consumer_emails.order_by("-created_at", "-pk"),
        "can_unsubscribe": any(s.status != Subscription.Status.INACTIVE for s in subscriptions),
    }
    return render(request, "dashboard/subscribers/detail.html", context)


def _team_evidence(request: HttpRequest) -> Evidence:
    return Evidence(
        actor=ConsentEvent.Actor.TEAM,
        source=ConsentEvent.Source.DASHBOARD,
        actor_user=current_user(request),
        ip=client_ip(request),
        user_agent=request.headers.get("User-Agent", ""),
    )


def _as_team(request: HttpRequest, subscriber: Subscriber, action: str, operation: Callable[[], bool]) -> bool:
    """Run one consent operation and, when it changed something, audit it in the same transaction."""
    with transaction.atomic():
        changed = operation()
        if changed:
            audit.record(
                brand=request.brand,  # type: ignore[attr-defined]
                user=current_user(request),
                action=action,
                target=subscriber.email,
                details={"subscriber_id": subscriber.pk},
            )
    return changed


def _to_detail(request: HttpRequest, subscriber: Subscriber) -> HttpResponse:
    return redirect("dash:subscriber", brand_slug=request.brand.slug, pk=subscriber.pk)  # type: ignore[attr-defined]


@brand_view(Role.EDITOR)
@require_POST
def subscriber_unsubscribe(request: HttpRequest, pk: int) -> HttpResponse:
    subscriber = get_for_brand(Subscriber, request, pk=pk)
    evidence = _team_evidence(request)
    left = _as_team(
        request,
        subscriber,
        "subscriber.unsubscribed",
        lambda: bool(consent.unsubscribe(subscriber=subscriber, audience_ids=None, evidence=evidence)),
    )
    if left:
        messages.success(request, _("%(email)s is unsubscribed from everything.") % {"email": subscriber.email})
    else:
        messages.info(request, _("%(email)s had no subscriptions to end.") % {"email": subscriber.email})
    return _to_detail(request, subscriber)


@brand_view(Role.EDITOR)
@require_POST
def subscriber_block(request: HttpRequest, pk: int) -> HttpResponse:
    subscriber = get_for_brand(Subscriber, request, pk=pk)
    evidence = _team_evidence(request)

    def block() -> bool:
        # The operation does nothing to someone already blocked (a new blocked_at means it acted), except
        # that it makes a bounce or complaint suppression, which a new opt-in would lift, permanent.
        hardens = Suppression.objects.filter(
            brand_id=subscriber.brand_id, email_hash=subscriber.email_hash, reason__in=consent.LIFTED_BY_OPT_IN
        ).exists()
        return consent.block(subscriber=subscriber, evidence=evidence).blocked_at != subscriber.blocked_at or hardens

    if _as_team(request, subscriber, "subscriber.blocked", block):
        messages.success(request, _("%(email)s is blocked and will never be mailed.") % {"email": subscriber.email})
    else:
        messages.info(request, _("%(email)s was already blocked.") % {"email": subscriber.email})
    return _to_detail(request, subscriber)


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def subscriber_erase(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: the confirmation page. POST with the typed address: erase the person."""
    subscriber = get_for_brand(Subscriber, request, pk=pk)
    # Bound on every POST, even an empty one, so a bare POST is an error rather than the page again.
    form = EraseForm(request.POST if request.method == "POST" else None, subscriber=subscriber)
    if request.method == "POST" and form.is_valid():
        evidence = _team_evidence(request)
        with transaction.atomic():
            consent.erase(subscriber=subscriber, evidence=evidence)
            # Not the address: the audit log must not keep what erasure removed. The hash is the
            # one the suppression list already holds.
            audit.record(
                brand=request.brand,  # type: ignore[attr-defined]
                user=current_user(request),
                action="subscriber.erased",
                target=f"subscriber {subscriber.pk}",
                details={"subscriber_id": subscriber.pk, "email_hash": subscriber.email_hash},
            )
        messages.success(request, _("The subscriber's personal data is erased."))
        return redirect("dash:subscribers", brand_slug=request.brand.slug)  # type: ignore[attr-defined]
    status = 400 if form.errors else 200
    return render(request, "dashboard/subscribers/erase.html", {"subscriber": subscriber, "form": form}, status=status)


# access.View is typed as returning HttpResponse; a StreamingHttpResponse is an HttpResponseBase.
@brand_view(Role.EDITOR)  # type: ignore[arg-type]
@require_GET
def subscriber_export(request: HttpRequest) -> HttpResponseBase:
    """The filtered list as CSV, streamed; recorded in the audit log with its filters."""
    brand = request.brand  # type: ignore[attr-defined]
    form = _filter_form(request)
    if not form.is_valid():
        return render(request, "dashboard/subscribers/list.html", {"form": form, "rows": []}, status=400)
    filters = form.filters()
    audit.record(brand=brand, user=current_user(request), action="subscribers.exported", details=filters.as_details())
    return csv_download(stream_csv(brand=brand, filters=filters), slug=brand.slug, what="subscribers")


urlpatterns = [
    path("subscribers/", subscriber_list, name="subscribers"),
    path("subscribers/export.csv", subscriber_export, name="subscribers_export"),
    path("subscribers/<int:pk>/", subscriber_detail, name="subscriber"),
    path("subscribers/<int:pk>/unsubscribe/", subscriber_unsubscribe, name="subscriber_unsubscribe"),
    path("subscribers/<int:pk>/block/", subscriber_block, name="subscriber_block"),
    path("subscribers/<int:pk>/erase/", subscriber_erase, name="subscriber_erase"),
]
