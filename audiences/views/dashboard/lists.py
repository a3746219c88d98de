"""Audiences and signup forms: lists, create and edit pages, archive, live preview, embed code.

Viewers read every page; editors and owners change things (``brand_view(..., write=True)``).
Each POST validates a form, calls one operation in ``audiences.lists`` or
``audiences.signup_forms``, and redirects.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.db.models import Max, Prefetch, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from audiences import embed, lists, signup_forms
from audiences.access import Role, brand_view, current_user, get_for_brand
from audiences.models import Audience, Brand, ConsentWording, SignupForm

# --- Forms: validate and clean, no side effects --------------------------------------


class AudienceForm(forms.Form):
    name = forms.CharField(label=gettext_lazy("Public name"), max_length=120)
    description = forms.CharField(
        label=gettext_lazy("Public description"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text=gettext_lazy("Shown next to the name on signup forms and in the preference centre."),
    )
    is_public = forms.BooleanField(
        label=gettext_lazy("Public"),
        required=False,
        help_text=gettext_lazy("Shown in the preference centre for anyone to join."),
    )

    @classmethod
    def initial_for(cls, audience: Audience) -> dict[str, Any]:
        return {"name": audience.name, "description": audience.description, "is_public": audience.is_public}


class SignupFormSettingsForm(forms.Form):
    title = forms.CharField(label=gettext_lazy("Title"), max_length=120)
    slug = forms.SlugField(
        label=gettext_lazy("Address"),
        max_length=60,
        help_text=gettext_lazy(
            "The last part of the form's web address: letters, digits, hyphens. "
            "Changing it breaks links and embedded copies already published."
        ),
    )
    intro = forms.CharField(
        label=gettext_lazy("Introduction"), required=False, widget=forms.Textarea(attrs={"rows": 3})
    )
    audiences = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Audiences offered"),
        queryset=Audience.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": gettext_lazy("Choose at least one audience.")},
    )
    ask_name = forms.BooleanField(label=gettext_lazy("Ask for a name"), required=False)
    thank_you_url = forms.URLField(
        label=gettext_lazy("Thank-you URL"),
        required=False,
        assume_scheme="https",
        # A text input (with a URL keyboard): the site's stylesheet styles text inputs, not type=url.
        widget=forms.TextInput(attrs={"inputmode": "url", "autocomplete": "url", "spellcheck": "false"}),
        help_text=gettext_lazy("Where to send people after they sign up (optional)."),
    )
    allowed_origins = forms.CharField(
        label=gettext_lazy("Allowed embedding origins"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "autocapitalize": "off"}),
        help_text=gettext_lazy(
            "One origin per line, e.g. https://www.example.com, allowed to embed and post this form "
            "(in addition to the brand's own, set in the brand settings)."
        ),
    )
    is_active = forms.BooleanField(
        label=gettext_lazy("Active"),
        required=False,
        help_text=gettext_lazy("An inactive form's page and embedded copies show “not found”."),
    )
    wording = forms.CharField(
        label=gettext_lazy("Consent wording"),
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text=gettext_lazy(
            "Shown next to the Subscribe button. Editing it creates a new version; "
            "people who already signed up keep the wording they were shown."
        ),
    )

    def __init__(self, *args: Any, brand: Brand, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        offered = self.fields["audiences"]
        assert isinstance(offered, forms.ModelMultipleChoiceField)
        # Only this brand's live audiences are choices: another brand's id is "not a valid choice".
        offered.queryset = Audience.objects.filter(brand=brand, archived_at__isnull=True).order_by("name")

    @classmethod
    def initial_for(cls, form: SignupForm, wordings: list[ConsentWording]) -> dict[str, Any]:
        """The form's settings; ``wordings`` newest first (the first is the current text)."""
        return {
            "title": form.title,
            "slug": form.slug,
            "intro": form.intro,
            "audiences": [a.pk for a in form.audiences.all() if a.archived_at is None],
            "ask_name": form.ask_name,
            "thank_you_url": form.thank_you_url,
            "allowed_origins": form.allowed_origins,
            "is_active": form.is_active,
            "wording": wordings[0].text if wordings else "",
        }

    def clean_allowed_origins(self) -> list[str]:
        try:
            return signup_forms.parse_origins(self.cleaned_data["allowed_origins"])
        except ValidationError as error:
            raise forms.ValidationError(error.messages) from error


def _bound(request: HttpRequest) -> Any:
    """POST data on a POST, else None: an empty POST is still validated (and fails)."""
    return request.POST if request.method == "POST" else None


# --- Audiences -----------------------------------------------------------------------


@brand_view()
@require_http_methods(["GET"])
def audience_list(request: HttpRequest) -> HttpResponse:
    audiences = list(lists.with_counts(request.brand))  # type: ignore[attr-defined]
    return render(request, "dashboard/lists/audiences.html", {"audiences": audiences})


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def audience_new(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    form = AudienceForm(_bound(request), initial={"is_public": True})
    if request.method == "POST" and form.is_valid():
        try:
            audience = lists.create_audience(brand=brand, user=current_user(request), **form.cleaned_data)
        except lists.AudienceError as error:
            form.add_error(error.field, str(error))
        else:
            messages.success(request, _("Audience %(name)s created.") % {"name": audience.name})
            return redirect("dash:audiences", brand_slug=brand.slug)
    return render(request, "dashboard/lists/audience_form.html", {"form": form}, status=400 if form.errors else 200)


@brand_view(Role.EDITOR, write=True)
@require_http_methods(["GET", "POST"])
def audience_edit(request: HttpRequest, pk: int) -> HttpResponse:
    audience = get_for_brand(lists.with_counts(request.brand), request, pk=pk)  # type: ignore[attr-defined]
    form = AudienceForm(_bound(request), initial=AudienceForm.initial_for(audience))
    if request.method == "POST" and form.is_valid():
        try:
            lists.update_audience(audience=audience, user=current_user(request), **form.cleaned_data)
        except lists.AudienceError as error:
            form.add_error(error.field, str(error))
        else:
            messages.success(request, _("Audience saved."))
            return redirect("dash:audiences", brand_slug=audience.brand.slug)
    forms_offering = audience.signup_forms.order_by("title")
    return render(
        request,
        "dashboard/lists/audience_form.html",
        {"form": form, "audience": audience, "forms_offering": forms_offering},
        status=400 if form.errors else 200,
    )


@brand_view(Role.EDITOR)
@require_POST
def audience_archive(request: HttpRequest, pk: int) -> HttpResponse:
    audience = get_for_brand(Audience, request, pk=pk)
    try:
        lists.archive_audience(audience=audience, user=current_user(request))
    except lists.AudienceError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, _("Audience %(name)s archived.") % {"name": audience.name})
    return redirect("dash:audiences", brand_slug=audience.brand.slug)


@brand_view(Role.EDITOR)
@require_POST
def audience_unarchive(request: HttpRequest, pk: int) -> HttpResponse:
    audience = get_for_brand(Audience, request, pk=pk)
    lists.unarchive_audience(audience=audience, user=current_user(request))
    messages.success(request, _("Audience %(name)s is live again.") % {"name": audience.name})
    return redirect("dash:audiences", brand_slug=audience.brand.slug)


# --- Signup forms --------------------------------------------------------------------


def _forms_of(brand: Brand) -> QuerySet[SignupForm]:
    return (
        SignupForm.objects.filter(brand=brand)
        .annotate(wording_version=Max("wordings__version"))
        .prefetch_related(Prefetch("audiences", queryset=Audience.objects.order_by("name")))
        .order_by("title", "pk")
    )


@brand_view()
@require_http_methods(["GET"])
def form_list(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    return render(request, "dashboard/lists/forms.html", {"signup_forms": list(_forms_of(brand))})


def _settings(form: SignupFormSettingsForm) -> dict[str, Any]:
    """The form's cleaned data as an operation's keyword arguments."""
    data = dict(form.cleaned_data)
    data["audiences"] = list(data["audiences"])
    return data


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def form_new(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    initial = {
        "ask_name": True,
        "is_active": True,
        "wording": _("Yes, email me what I ticked. I can unsubscribe at any time."),
    }
    form = SignupFormSettingsForm(_bound(request), brand=brand, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            created = signup_forms.create_form(brand=brand, user=current_user(request), **_settings(form))
        except signup_forms.SignupFormError as error:
            form.add_error(error.field, str(error))
        else:
            messages.success(request, _("Form %(title)s created.") % {"title": created.title})
            return redirect("dash:form", brand_slug=brand.slug, pk=created.pk)
    context = {"settings_form": form}
    return render(request, "dashboard/lists/form_edit.html", context, status=400 if form.errors else 200)


@brand_view(Role.EDITOR, write=True)
@require_http_methods(["GET", "POST"])
def form_edit(request: HttpRequest, pk: int) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    signup_form = get_for_brand(_forms_of(brand).select_related("brand"), request, pk=pk)
    wordings = list(signup_form.wordings.order_by("-version"))
    initial = SignupFormSettingsForm.initial_for(signup_form, wordings)
    form = SignupFormSettingsForm(_bound(request), brand=brand, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            signup_forms.update_form(form=signup_form, user=current_user(request), **_settings(form))
        except signup_forms.SignupFormError as error:
            form.add_error(error.field, str(error))
        else:
            messages.success(request, _("Form saved."))
            return redirect("dash:form", brand_slug=brand.slug, pk=signup_form.pk)
    context = {
        "settings_form": form,
        "signup_form": signup_form,
        "wordings": wordings,
        "hosted_url": reverse("audiences:signup", args=[brand.slug, signup_form.slug]),
        "embed_url": reverse("audiences:signup_embed", args=[brand.slug, signup_form.slug]),
        # The HTML snippet shows the current wording; a form saved without one (admin) has none yet.
        "embed_snippet": embed.embed_snippet(signup_form) if wordings else "",
        "iframe_snippet": embed.iframe_snippet(signup_form),
        "live_audiences": [a for a in signup_form.audiences.all() if a.archived_at is None],
        "archived_audiences": [a for a in signup_form.audiences.all() if a.archived_at is not None],
    }
    return render(request, "dashboard/lists/form_edit.html", context, status=400 if form.errors else 200)


urlpatterns = [
    path("audiences/", audience_list, name="audiences"),
    path("audiences/new/", audience_new, name="audience_new"),
    path("audiences/<int:pk>/", audience_edit, name="audience"),
    path("audiences/<int:pk>/archive/", audience_archive, name="audience_archive"),
    path("audiences/<int:pk>/unarchive/", audience_unarchive, name="audience_unarchive"),
    path("forms/", form_list, name="forms"),
    path("forms/new/", form_new, name="form_new"),
    path("forms/<int:pk>/", form_edit, name="form"),
]
