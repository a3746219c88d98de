"""The suppression list page: search, filter by reason, keyset pages; the team's block and the CSV export.

Every member reads the list. Adding addresses (a team block) and exporting are
for editors and owners. There is no way to remove an entry here or anywhere on
the dashboard: only the person's own new double opt-in lifts a bounce or
complaint suppression.
"""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db import transaction
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import path
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_http_methods

from audiences import audit, suppressions
from audiences.access import Role, brand_view, current_user
from audiences.consent import Evidence
from audiences.models import ConsentEvent, Suppression, email_hash
from audiences.ratelimit import client_ip
from audiences.subscriber_queries import Cursor, page
from audiences.views.dashboard import csv_download

MAX_ADDRESSES = 1000
# Addresses are separated by line breaks, commas, semicolons or spaces (none can be in an unquoted address).
_SEPARATORS = re.compile(r"[\s,;]+")
# How many addresses a message or an error names before it says "and N more".
_NAMED = 20


class FilterForm(forms.Form):
    q = forms.CharField(
        label=gettext_lazy("Search"),
        required=False,
        max_length=254,
        help_text=gettext_lazy("A whole address, or at least 3 characters of one."),
    )
    reason = forms.ChoiceField(
        label=gettext_lazy("Reason"),
        required=False,
        choices=[("", gettext_lazy("Any reason")), *Suppression.Reason.choices],
    )
    after = forms.CharField(required=False, widget=forms.HiddenInput)
    before = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def clean_q(self) -> str:
        text: str = self.cleaned_data["q"].strip()
        # Shorter text cannot use the trigram index on addresses (and would match nearly everyone).
        if text and len(text) < 3:
            raise ValidationError(_("Type at least 3 characters to search."))
        return text

    def _cursor(self, name: str) -> Cursor | None:
        token = self.cleaned_data.get(name) or ""
        if not token:
            return None
        try:
            return Cursor.decode(token)
        except ValueError:
            raise ValidationError(_("This page link is broken; start again from the first page.")) from None

    def clean_after(self) -> Cursor | None:
        return self._cursor("after")

    def clean_before(self) -> Cursor | None:
        return self._cursor("before")

    def filters(self) -> suppressions.Filters:
        return suppressions.Filters(q=self.cleaned_data.get("q", ""), reason=self.cleaned_data.get("reason", ""))


def _named(items: list[str]) -> str:
    """The first few items, comma separated, and how many more there are."""
    shown = ", ".join(items[:_NAMED])
    rest = len(items) - _NAMED
    if rest > 0:
        shown += " " + ngettext("and %(n)s more", "and %(n)s more", rest) % {"n": rest}
    return shown


class AddForm(forms.Form):
    """The team's block: addresses to suppress for good, and why."""

    emails = forms.CharField(
        label=gettext_lazy("Addresses"),
        widget=forms.Textarea(attrs={"rows": 8, "autocomplete": "off", "spellcheck": "false"}),
        max_length=MAX_ADDRESSES * 256,
        help_text=gettext_lazy("One per line, or separated by commas. At most 1,000 at a time."),
    )
    note = forms.CharField(
        label=gettext_lazy("Why"),
        max_length=255,
        help_text=gettext_lazy("Kept with each new entry, for example “asked by phone never to be emailed”."),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("label_suffix", "")
        super().__init__(*args, **kwargs)

    def clean_emails(self) -> list[str]:
        """The normalised addresses, each once, in the order given; every invalid one named in the error."""
        raw = [part for part in _SEPARATORS.split(self.cleaned_data["emails"]) if part]
        if not raw:
            raise ValidationError(_("Enter at least one address."))
        if len(raw) > MAX_ADDRESSES:
            raise ValidationError(
                _("That is %(n)s addresses; add at most %(max)s at a time.") % {"n": len(raw), "max": MAX_ADDRESSES}
            )
        valid: dict[str, None] = {}
        invalid: list[str] = []
        for part in raw:
            address = suppressions.exact_address(part)
            if address is None:
                invalid.append(part)
            else:
                valid[address] = None
        if invalid:
            raise ValidationError(
                ngettext(
                    "This is not a valid email address: %(list)s. Nothing was added.",
                    "These are not valid email addresses: %(list)s. Nothing was added.",
                    len(invalid),
                )
                % {"list": _named(invalid)}
            )
        return list(valid)

    def clean_note(self) -> str:
        return " ".join(self.cleaned_data["note"].split())


@brand_view()
@require_GET
def suppression_list(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    form = FilterForm(request.GET)
    if not form.is_valid():
        return render(request, "dashboard/suppressions/list.html", {"form": form, "rows": []}, status=400)
    filters = form.filters()
    result = page(
        suppressions.filtered(brand=brand, filters=filters),
        after=form.cleaned_data["after"],
        before=form.cleaned_data["before"],
    )
    context = {
        "form": form,
        "rows": suppressions.with_addresses(result.rows, brand=brand),
        "newer": result.newer.encode() if result.newer else None,
        "older": result.older.encode() if result.older else None,
        "filtered": filters.active,
        "erased": Suppression.Reason.ERASED,
    }
    return render(request, "dashboard/suppressions/list.html", context)


def _message(request: HttpRequest, result: suppressions.Added) -> None:
    if result.added:
        messages.success(
            request,
            ngettext(
                "%(n)s address added to the suppression list: %(list)s.",
                "%(n)s addresses added to the suppression list: %(list)s.",
                len(result.added),
            )
            % {"n": len(result.added), "list": _named(result.added)},
        )
    if result.already:
        messages.info(
            request,
            ngettext(
                "%(n)s address was already on the list and keeps its entry: %(list)s.",
                "%(n)s addresses were already on the list and keep their entries: %(list)s.",
                len(result.already),
            )
            % {"n": len(result.already), "list": _named(result.already)},
        )
    if result.blocked:
        messages.success(
            request,
            ngettext(
                "%(n)s subscriber is now blocked: %(list)s.",
                "%(n)s subscribers are now blocked: %(list)s.",
                len(result.blocked),
            )
            % {"n": len(result.blocked), "list": _named([s.email for s in result.blocked])},
        )


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def suppression_add(request: HttpRequest) -> HttpResponse:
    """GET: the form. POST: suppress every address, or none when one is invalid."""
    brand = request.brand  # type: ignore[attr-defined]
    form = AddForm(request.POST if request.method == "POST" else None)
    if request.method == "POST" and form.is_valid():
        user = current_user(request)
        evidence = Evidence(
            actor=ConsentEvent.Actor.TEAM,
            source=ConsentEvent.Source.DASHBOARD,
            actor_user=user,
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        emails, note = form.cleaned_data["emails"], form.cleaned_data["note"]
        with transaction.atomic():
            result = suppressions.add(brand=brand, emails=emails, note=note, evidence=evidence)
            # Hashes, not addresses: the list keeps none, and neither should its audit trail.
            audit.record(
                brand=brand,
                user=user,
                action="suppressions.added",
                target=f"{len(emails)} addresses",
                details={
                    "note": note,
                    "added": [email_hash(a) for a in result.added],
                    "already": [email_hash(a) for a in result.already],
                    "blocked_subscribers": [s.pk for s in result.blocked],
                },
            )
        _message(request, result)
        return redirect("dash:suppressions", brand_slug=brand.slug)
    status = 400 if form.errors else 200
    return render(request, "dashboard/suppressions/add.html", {"form": form}, status=status)


# access.View is typed as returning HttpResponse; a StreamingHttpResponse is an HttpResponseBase.
@brand_view(Role.EDITOR)  # type: ignore[arg-type]
@require_GET
def suppression_export(request: HttpRequest) -> HttpResponseBase:
    """The filtered list as CSV, streamed; recorded in the audit log with its filters."""
    brand = request.brand  # type: ignore[attr-defined]
    form = FilterForm(request.GET)
    if not form.is_valid():
        return render(request, "dashboard/suppressions/list.html", {"form": form, "rows": []}, status=400)
    filters = form.filters()
    audit.record(brand=brand, user=current_user(request), action="suppressions.exported", details=filters.as_details())
    return csv_download(suppressions.stream_csv(brand=brand, filters=filters), slug=brand.slug, what="suppressions")


urlpatterns = [
    path("suppressions/", suppression_list, name="suppressions"),
    path("suppressions/add/", suppression_add, name="suppressions_add"),
    path("suppressions/export.csv", suppression_export, name="suppressions_export"),
]
