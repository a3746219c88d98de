"""Imports: upload a CSV file, map its columns and state the consent basis, watch it run,
read the report, and send the pending rows one confirmation request.

Every page is for editors and owners (an import changes audiences); viewers get 403.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audiences import imports
from audiences.access import Role, brand_view, current_user, get_for_brand
from audiences.models import Audience, ImportJob

Basis = ImportJob.Basis

COUNT_LABELS = [
    ("created", gettext_lazy("New subscribers")),
    ("updated", gettext_lazy("Existing subscribers updated")),
    ("unchanged", gettext_lazy("Already present, unchanged")),
    ("pending", gettext_lazy("Awaiting confirmation (no proof of opt-in)")),
    ("unsubscribed", gettext_lazy("Skipped: unsubscribed")),
    ("blocked", gettext_lazy("Skipped: blocked")),
    ("suppressed", gettext_lazy("Skipped: suppressed")),
    ("erased", gettext_lazy("Skipped: erased")),
    ("invalid", gettext_lazy("Invalid rows")),
]

# Header names that pre-select a column on the mapping page.
GUESSES = {
    "email": ("email", "e-mail", "email address", "mail"),
    "name": ("name", "full name", "fullname"),
    "language": ("language", "lang", "locale"),
    "confirmed_at": ("confirmed_at", "confirmed", "opt-in time", "optin", "double opt-in", "confirmation time"),
}


class UploadForm(forms.Form):
    file = forms.FileField(
        label=gettext_lazy("CSV file"),
        help_text=gettext_lazy("UTF-8 text with a header line; commas, semicolons or tabs between fields."),
    )


def _column_choices(header: list[str]) -> list[tuple[int, str]]:
    return [(i, f"{i + 1}. {name or _('(no name)')}") for i, name in enumerate(header)]


class StartForm(forms.Form):
    """The mapping, the audiences and the consent basis: everything the import needs to start."""

    email_column = forms.TypedChoiceField(label=gettext_lazy("Email address"), coerce=int)
    name_column = forms.TypedChoiceField(label=gettext_lazy("Name"), coerce=int, required=False, empty_value=None)
    language_column = forms.TypedChoiceField(
        label=gettext_lazy("Language"),
        coerce=int,
        required=False,
        empty_value=None,
        help_text=gettext_lazy("Language codes such as en or de-AT. Empty cells get the brand's default language."),
    )
    attribute_columns = forms.TypedMultipleChoiceField(
        label=gettext_lazy("Also keep these columns as attributes"),
        coerce=int,
        required=False,
        widget=forms.CheckboxSelectMultiple,
    )
    audiences = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Add everyone to"), queryset=Audience.objects.none(), widget=forms.CheckboxSelectMultiple
    )
    basis = forms.ChoiceField(
        label=gettext_lazy("Proof of consent"), choices=Basis.choices, widget=forms.RadioSelect, initial=Basis.NONE
    )
    confirmed_at_column = forms.TypedChoiceField(
        label=gettext_lazy("Column with the confirmation time"),
        coerce=int,
        required=False,
        empty_value=None,
        help_text=gettext_lazy(
            "ISO 8601, e.g. 2024-03-01T09:30:00Z (no time zone means UTC). Rows with an empty or unreadable time "
            "are added as pending."
        ),
    )
    consent_source = forms.CharField(
        label=gettext_lazy("Where and how these people opted in"),
        max_length=255,
        required=False,
        help_text=gettext_lazy(
            "Needed with either kind of proof. For example: newsletter box at checkout on shop.example.com, "
            "2021 to 2024."
        ),
    )
    attested_on = forms.DateField(
        label=gettext_lazy("Date of the opt-in"),
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}),
        help_text=gettext_lazy("When these people confirmed (the latest date if it varies)."),
    )
    wording = forms.CharField(
        label=gettext_lazy("The consent wording they agreed to"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
    )
    attest = forms.BooleanField(
        label=gettext_lazy(
            "I confirm these people gave double-opt-in consent to receive these emails, as stated above."
        ),
        required=False,
    )

    def __init__(self, *args: Any, job: ImportJob, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        columns = _column_choices(job.header)
        optional: list[tuple[Any, str]] = [("", _("(not in the file)")), *columns]
        self.fields["email_column"].choices = columns  # type: ignore[attr-defined]
        for name in ("name_column", "language_column", "confirmed_at_column"):
            self.fields[name].choices = optional  # type: ignore[attr-defined]
        self.fields["attribute_columns"].choices = columns  # type: ignore[attr-defined]
        self.fields["audiences"].queryset = Audience.objects.filter(  # type: ignore[attr-defined]
            brand_id=job.brand_id, archived_at__isnull=True
        ).order_by("name")
        lowered = [name.strip().lower() for name in job.header]
        for key, names in GUESSES.items():
            found = next((i for i, name in enumerate(lowered) if name in names), None)
            if found is not None:
                self.fields[f"{key}_column"].initial = found

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        basis = data.get("basis")
        required: dict[str, list[str]] = {
            Basis.COLUMN: ["confirmed_at_column", "consent_source"],
            Basis.ATTESTATION: ["consent_source", "attested_on", "wording", "attest"],
        }
        for name in required.get(str(basis), []):
            if data.get(name) in (None, "", False) and name not in self.errors:
                self.add_error(name, _("Needed for this proof of consent."))
        attested_on = data.get("attested_on")
        if attested_on and attested_on > timezone.localdate():
            self.add_error("attested_on", _("The date cannot be in the future."))
        singles = ["email_column", "name_column", "language_column"]
        if basis == Basis.COLUMN:
            singles.append("confirmed_at_column")
        used = [data.get(name) for name in singles if data.get(name) is not None]
        if len(set(used)) != len(used):
            self.add_error(None, _("Map each column to one purpose only."))
        if set(data.get("attribute_columns") or []) & set(used):
            self.add_error("attribute_columns", _("A column mapped above cannot also be an attribute."))
        return data

    def mapping(self) -> imports.Mapping:
        data = self.cleaned_data
        return imports.Mapping(
            email=data["email_column"],
            name=data["name_column"],
            language=data["language_column"],
            confirmed_at=data["confirmed_at_column"] if data["basis"] == Basis.COLUMN else None,
            attributes=tuple(sorted(data["attribute_columns"])),
        )


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def index(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    form = UploadForm(request.POST, request.FILES) if request.method == "POST" else UploadForm()
    if request.method == "POST" and form.is_valid():
        try:
            job = imports.create(brand=brand, user=current_user(request), upload=form.cleaned_data["file"])
        except imports.ImportRefused as error:
            form.add_error("file", str(error))
        else:
            messages.success(request, _("File uploaded. Now choose what each column holds."))
            return redirect("dash:import", brand_slug=brand.slug, pk=job.pk)
    jobs = ImportJob.objects.filter(brand=brand).select_related("created_by")
    context = {
        "form": form,
        "page": Paginator(jobs, 20).get_page(request.GET.get("page")),
        "max_mb": imports.max_bytes() // (1024 * 1024),
    }
    return render(request, "dashboard/imports/index.html", context, status=400 if form.errors else 200)


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Before the start: the mapping form. After: progress, then the results."""
    job = get_for_brand(ImportJob, request, pk=pk)
    if job.status != ImportJob.Status.UPLOADED:
        if request.method == "POST":
            messages.error(request, _("This import has already been started."))
            return redirect("dash:import", brand_slug=job.brand.slug, pk=job.pk)
        return _progress_page(request, job)
    form = StartForm(request.POST or None, job=job)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            imports.start(
                job=job,
                user=current_user(request),
                mapping=form.mapping(),
                audiences=list(data["audiences"]),
                basis=data["basis"],
                consent_source=data["consent_source"],
                attested_on=data["attested_on"],
                wording=data["wording"],
            )
        except imports.ImportRefused as error:
            messages.error(request, str(error))
        else:
            messages.success(request, _("Import started."))
        return redirect("dash:import", brand_slug=job.brand.slug, pk=job.pk)
    try:
        rows = imports.preview(job)
    except imports.ImportFileError as error:
        rows = []
        messages.error(request, str(error))
    context = {"job": job, "form": form, "preview": rows}
    return render(request, "dashboard/imports/configure.html", context, status=400 if form.errors else 200)


def _progress_page(request: HttpRequest, job: ImportJob) -> HttpResponse:
    state = imports.progress(job)
    context = {
        "job": job,
        "state": state,
        "counts": [(key, label, state["counts"][key]) for key, label in COUNT_LABELS],
        "audiences": job.audiences.order_by("name"),
        "issues": job.issues.count() if state["finished"] else 0,
        "can_request_confirmations": job.status == ImportJob.Status.DONE
        and job.confirmations_requested_at is None
        and state["counts"]["pending"] > 0,
    }
    return render(request, "dashboard/imports/progress.html", context)


@brand_view(Role.EDITOR)
@require_GET
def status(request: HttpRequest, pk: int) -> JsonResponse:
    job = get_for_brand(ImportJob, request, pk=pk)
    response = JsonResponse(imports.progress(job))
    response["Cache-Control"] = "no-store"
    return response


class _Echo:
    """A file-like object whose write returns the line, for streaming csv.writer output."""

    def write(self, value: str) -> str:
        return value


# access.View is typed as returning HttpResponse; a StreamingHttpResponse is an HttpResponseBase.
@brand_view(Role.EDITOR)  # type: ignore[arg-type]
@require_GET
def report(request: HttpRequest, pk: int) -> HttpResponseBase:
    job = get_for_brand(ImportJob, request, pk=pk)
    writer = csv.writer(_Echo())

    def lines() -> Iterator[str]:
        for row in imports.report_rows(job):
            yield writer.writerow(row)

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="import-{job.pk}-report.csv"'
    response["Cache-Control"] = "no-store"
    return response


@brand_view(Role.EDITOR)
@require_POST
def confirmations(request: HttpRequest, pk: int) -> HttpResponse:
    job = get_for_brand(ImportJob, request, pk=pk)
    try:
        queued = imports.request_confirmations(job=job, user=current_user(request))
    except imports.ImportRefused as error:
        messages.error(request, str(error))
    else:
        messages.success(request, _("%(n)s confirmation requests are on their way.") % {"n": queued})
    return redirect("dash:import", brand_slug=job.brand.slug, pk=job.pk)


urlpatterns = [
    path("imports/", index, name="imports"),
    path("imports/<int:pk>/", detail, name="import"),
    path("imports/<int:pk>/status.json", status, name="import_status"),
    path("imports/<int:pk>/report.csv", report, name="import_report"),
    path("imports/<int:pk>/confirmations/", confirmations, name="import_confirmations"),
]
