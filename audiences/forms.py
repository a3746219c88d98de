"""Consumer-facing forms. They validate and clean; they never change state."""

from __future__ import annotations

import time
from typing import Any

from django import forms
from django.conf import settings
from django.core import signing
from django.utils.translation import gettext_lazy as _

from audiences.consent import normalise_email
from audiences.models import Audience, SignupForm, Subscriber

_TS_SALT = "assent.signup.rendered-at"
_CONTROL = {chr(c) for c in range(32)} | {"\x7f"}


def render_stamp(form: SignupForm, *, at: float | None = None) -> str:
    """A signed 'rendered at' stamp: the minimum fill time is measured from it."""
    return signing.dumps({"f": form.pk, "t": time.time() if at is None else at}, salt=_TS_SALT)


def stamp_age(form: SignupForm, stamp: str) -> float | None:
    """Seconds since the page was rendered, or None when the stamp is missing or not ours."""
    if not stamp:
        return None
    try:
        data = signing.loads(stamp, salt=_TS_SALT, max_age=86400)
    except signing.BadSignature:
        return None
    if not isinstance(data, dict) or data.get("f") != form.pk:
        return None
    return time.time() - float(data.get("t", 0))


def clean_name(raw: str) -> str:
    """One line, no control characters: a name can never break a header."""
    name = " ".join(raw.split())
    if any(ch in _CONTROL for ch in name):
        raise forms.ValidationError(_("The name contains characters that are not allowed."))
    return name


class SignupFormForm(forms.Form):
    email = forms.CharField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "inputmode": "email"}),
    )
    name = forms.CharField(
        label=_("Name"), max_length=100, required=False, widget=forms.TextInput(attrs={"autocomplete": "name"})
    )
    audiences = forms.ModelMultipleChoiceField(
        label=_("What would you like to receive?"),
        queryset=Audience.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    # Honeypot: hidden from people (CSS and aria-hidden); bots fill every field.
    website = forms.CharField(required=False, label=_("Leave this field empty"))
    ts = forms.CharField(required=False, widget=forms.HiddenInput)
    wording_version = forms.IntegerField(required=False, min_value=1, widget=forms.HiddenInput)

    def __init__(self, *args: Any, signup_form: SignupForm, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.signup_form = signup_form
        self.offered = list(signup_form.audiences.filter(archived_at__isnull=True).order_by("name"))
        choices = self.fields["audiences"]
        assert isinstance(choices, forms.ModelMultipleChoiceField)
        choices.queryset = Audience.objects.filter(pk__in=[a.pk for a in self.offered])
        if not signup_form.ask_name:
            del self.fields["name"]
        if len(self.offered) <= 1:
            # One audience: joining it is the whole point of the form; no checkbox.
            del self.fields["audiences"]

    def clean_email(self) -> str:
        return normalise_email(self.cleaned_data["email"])

    def clean_name(self) -> str:
        return clean_name(self.cleaned_data.get("name", ""))

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean() or {}
        if "audiences" in self.fields:
            if not cleaned.get("audiences") and not self.errors.get("audiences"):
                self.add_error("audiences", _("Choose at least one."))
        else:
            cleaned["audiences"] = self.offered
        return cleaned

    @property
    def is_bot(self) -> bool:
        return bool(self.data.get("website"))

    def filled_too_fast(self, *, cross_origin: bool) -> bool:
        """Hosted and iframe forms carry a render stamp; embedded snippets can't, and are
        protected by the form's allowed origins instead."""
        age = stamp_age(self.signup_form, self.data.get("ts", ""))
        if age is None:
            return not cross_origin
        return age < settings.SIGNUP_MIN_FILL_SECONDS


class PreferencesForm(forms.Form):
    """The preference centre's main form: audiences on/off, how often, profile."""

    audiences = forms.ModelMultipleChoiceField(
        label=_("Your subscriptions"),
        queryset=Audience.objects.none(),
        widget=forms.CheckboxSelectMultiple,
        required=False,
    )
    frequency = forms.ChoiceField(label=_("How often"), choices=Subscriber.Frequency.choices, widget=forms.RadioSelect)
    name = forms.CharField(label=_("Name"), max_length=100, required=False)
    language = forms.ChoiceField(label=_("Language"), choices=settings.LANGUAGES)

    def __init__(self, *args: Any, shown: list[Audience], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shown = shown
        choices = self.fields["audiences"]
        assert isinstance(choices, forms.ModelMultipleChoiceField)
        choices.queryset = Audience.objects.filter(pk__in=[a.pk for a in shown])

    def clean_name(self) -> str:
        return clean_name(self.cleaned_data.get("name", ""))


class ManageLinkForm(forms.Form):
    email = forms.CharField(
        label=_("Email address"),
        max_length=254,
        widget=forms.EmailInput(attrs={"autocomplete": "email", "inputmode": "email"}),
    )
