"""The campaign pages' forms: validate and clean, no side effects.

Segment rules are edited without JavaScript as a fixed number of rows, each a
field select (an attribute with its name, language, signup date, last
engagement), a comparison and a value; ``targeting.validate`` has the last word.
"""

from __future__ import annotations

import re
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Any

from django import forms
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from audiences.consent import normalise_email
from audiences.models import Audience, Brand, Subscriber
from campaigns import targeting
from campaigns.models import Campaign

RULE_ROWS = 5
ATTRIBUTE = "attribute"
FIELD_CHOICES = [
    ("", "—"),
    (ATTRIBUTE, gettext_lazy("Attribute (name it)")),
    ("language", gettext_lazy("Language")),
    ("signed_up", gettext_lazy("Signup date")),
    ("last_engaged", gettext_lazy("Last engagement")),
]
OP_CHOICES = [("", "—"), *targeting.OPS.items()]
# A past time within this margin still counts as "now": the form took a moment to fill in.
PAST_MARGIN = timedelta(minutes=5)
_RULE_PREFIX = re.compile(r"^rule \d+: ")


def _text(label: Any, **kwargs: Any) -> forms.CharField:
    return forms.CharField(label=label, required=False, **kwargs)


class TargetingForm(forms.Form):
    """Audiences (any of) and segment rules (all of): what the live count and the editor share."""

    audiences = forms.ModelMultipleChoiceField(
        label=gettext_lazy("Audiences"),
        queryset=Audience.objects.none(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text=gettext_lazy("People subscribed to any of these."),
    )

    def __init__(self, *args: Any, brand: Brand, rows: int = RULE_ROWS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.brand = brand
        self.rows = rows
        chosen = self.fields["audiences"]
        assert isinstance(chosen, forms.ModelMultipleChoiceField)
        # Only this brand's live audiences are choices: another brand's id is "not a valid choice".
        chosen.queryset = Audience.objects.filter(brand=brand, archived_at__isnull=True).order_by("name")
        for i in range(rows):
            self.fields[f"rule_{i}_field"] = forms.ChoiceField(
                label=gettext_lazy("Field"), choices=FIELD_CHOICES, required=False
            )
            self.fields[f"rule_{i}_key"] = _text(
                gettext_lazy("Attribute name"),
                max_length=64,
                widget=forms.TextInput(attrs={"spellcheck": "false", "autocapitalize": "off"}),
            )
            self.fields[f"rule_{i}_op"] = forms.ChoiceField(
                label=gettext_lazy("Comparison"), choices=OP_CHOICES, required=False
            )
            self.fields[f"rule_{i}_value"] = _text(gettext_lazy("Value"), max_length=500)

    @staticmethod
    def rule_initial(segment: list[dict[str, str]]) -> dict[str, str]:
        initial: dict[str, str] = {}
        for i, rule in enumerate(segment):
            field = rule.get("field", "")
            is_attribute = field.startswith("attributes.")
            initial[f"rule_{i}_field"] = ATTRIBUTE if is_attribute else field
            initial[f"rule_{i}_key"] = field.removeprefix("attributes.") if is_attribute else ""
            initial[f"rule_{i}_op"] = rule.get("op", "")
            initial[f"rule_{i}_value"] = rule.get("value", "")
        return initial

    def rule_rows(self) -> list[dict[str, Any]]:
        """Each row's bound fields, for the template."""
        return [
            {
                "n": i + 1,
                "field": self[f"rule_{i}_field"],
                "key": self[f"rule_{i}_key"],
                "op": self[f"rule_{i}_op"],
                "value": self[f"rule_{i}_value"],
            }
            for i in range(self.rows)
        ]

    def _rule(self, i: int) -> dict[str, str] | None:
        """Row ``i`` as a rule, None when it is empty; a form error when it is incomplete or invalid."""
        data = self.cleaned_data
        field, key = data.get(f"rule_{i}_field", ""), data.get(f"rule_{i}_key", "").strip()
        op, value = data.get(f"rule_{i}_op", ""), data.get(f"rule_{i}_value", "").strip()
        if not (field or op or value or key):
            return None
        name = f"rule_{i}_field"
        if not field:
            self.add_error(name, _("Rule %(n)s: choose what to compare.") % {"n": i + 1})
            return None
        if field == ATTRIBUTE and not key:
            self.add_error(name, _("Rule %(n)s: name the attribute.") % {"n": i + 1})
            return None
        if not op:
            self.add_error(name, _("Rule %(n)s: choose a comparison.") % {"n": i + 1})
            return None
        rule = {"field": f"attributes.{key}" if field == ATTRIBUTE else field, "op": op, "value": value}
        try:
            return targeting.validate([rule])[0]
        except targeting.RuleError as error:
            detail = _RULE_PREFIX.sub("", str(error))
            self.add_error(name, _("Rule %(n)s: %(problem)s") % {"n": i + 1, "problem": detail})
            return None

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        rules = [self._rule(i) for i in range(self.rows)]
        data["segment"] = [rule for rule in rules if rule is not None]
        return data


class CampaignForm(TargetingForm):
    name = forms.CharField(
        label=gettext_lazy("Name"), max_length=200, help_text=gettext_lazy("Only the team sees this.")
    )
    subject = forms.CharField(label=gettext_lazy("Subject"), max_length=255)
    preheader = _text(
        gettext_lazy("Preheader"),
        max_length=255,
        help_text=gettext_lazy("The short line many inboxes show after the subject."),
    )
    from_name = _text(gettext_lazy("Sender name"), max_length=120)
    from_email = forms.EmailField(label=gettext_lazy("Sender address"), required=False)
    reply_to = forms.EmailField(label=gettext_lazy("Reply-to address"), required=False)
    html_body = forms.CharField(
        label=gettext_lazy("HTML body"),
        widget=forms.Textarea(attrs={"rows": 18, "spellcheck": "false", "class": "code"}),
        help_text=gettext_lazy(
            "A template: {{ subscriber.first_name | default('friend') }}, {{ subscriber.attributes.city }}, "
            "{{ brand.name }}. The footer with your postal address and the unsubscribe link is always added."
        ),
    )
    text_body = _text(
        gettext_lazy("Text body"),
        widget=forms.Textarea(attrs={"rows": 10, "spellcheck": "false", "class": "code"}),
        help_text=gettext_lazy("Leave empty to derive it from the HTML."),
    )
    send_rate = forms.IntegerField(
        label=gettext_lazy("Send rate"),
        required=False,
        min_value=1,
        max_value=1_000_000,
        help_text=gettext_lazy("Messages per minute; empty: as fast as possible."),
    )

    field_order = [
        "name",
        "subject",
        "preheader",
        "from_name",
        "from_email",
        "reply_to",
        "html_body",
        "text_body",
        "audiences",
        "send_rate",
    ]

    def __init__(self, *args: Any, brand: Brand, **kwargs: Any) -> None:
        super().__init__(*args, brand=brand, **kwargs)
        # The brand's sender shows through as the placeholder: empty means "the brand's".
        defaults = {"from_name": brand.from_name, "from_email": brand.from_email, "reply_to": brand.reply_to}
        for name, value in defaults.items():
            field = self.fields[name]
            field.widget.attrs["placeholder"] = value
            field.help_text = _("Empty: the brand's, %(value)s.") % {"value": value} if value else _("Empty: none.")

    @classmethod
    def initial_for(cls, campaign: Campaign) -> dict[str, Any]:
        return {
            "name": campaign.name,
            "subject": campaign.subject,
            "preheader": campaign.preheader,
            "from_name": campaign.from_name,
            "from_email": campaign.from_email,
            "reply_to": campaign.reply_to,
            "html_body": campaign.html_body,
            "text_body": campaign.text_body,
            "send_rate": campaign.send_rate,
            "audiences": [a.pk for a in campaign.audiences.all() if a.archived_at is None],
            **cls.rule_initial(campaign.segment),
        }

    def operation_kwargs(self) -> dict[str, Any]:
        """The cleaned data as ``compose.create_campaign`` / ``update_campaign`` keyword arguments."""
        data = self.cleaned_data
        names = ("name", "subject", "preheader", "from_name", "from_email", "reply_to", "html_body", "text_body")
        return {
            **{name: data[name] for name in names},
            "send_rate": data["send_rate"],
            "audiences": list(data["audiences"]),
            "segment": data["segment"],
        }


def rule_rows_for(segment: list[dict[str, str]]) -> int:
    """Enough rows for a saved segment (one made elsewhere may have more than the default)."""
    return max(RULE_ROWS, len(segment))


class ScheduleForm(forms.Form):
    """Now, or a date and time entered in the brand's time zone."""

    when = forms.ChoiceField(
        label=gettext_lazy("When"),
        choices=[("now", gettext_lazy("Send now")), ("later", gettext_lazy("At a date and time"))],
        widget=forms.RadioSelect,
        initial="now",
    )
    date = forms.DateField(label=gettext_lazy("Date"), required=False, widget=forms.DateInput(attrs={"type": "date"}))
    time = forms.TimeField(label=gettext_lazy("Time"), required=False, widget=forms.TimeInput(attrs={"type": "time"}))

    def __init__(self, *args: Any, time_zone: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.time_zone = time_zone

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        data["at"] = None
        if data.get("when") != "later":
            return data
        day, clock = data.get("date"), data.get("time")
        if day is None:
            self.add_error("date", _("Enter the date."))
        if clock is None:
            self.add_error("time", _("Enter the time."))
        if day is None or clock is None:
            return data
        zone = zoneinfo.ZoneInfo(self.time_zone)
        local = datetime.combine(day, clock, tzinfo=zone)
        # A wall time skipped when the clocks go forward doesn't survive a round trip through UTC.
        if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
            self.add_error(
                "time",
                _("%(time)s does not exist on that day in %(zone)s (the clocks change); choose another time.")
                % {"time": clock.strftime("%H:%M"), "zone": self.time_zone},
            )
            return data
        if local < timezone.now() - PAST_MARGIN:
            self.add_error("time", _("That time has passed: choose “Send now” or a later time."))
            return data
        data["at"] = local
        return data


class PreviewForm(forms.Form):
    """Whom to preview as: one of the recent recipients, or anyone of the brand by address."""

    subscriber = forms.TypedChoiceField(label=gettext_lazy("Recent recipient"), coerce=int, required=False)
    email = forms.CharField(
        label=gettext_lazy("Or an address"),
        required=False,
        max_length=254,
        widget=forms.TextInput(attrs={"inputmode": "email", "autocomplete": "off", "spellcheck": "false"}),
    )

    def __init__(self, *args: Any, brand: Brand, recent: list[Subscriber], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.brand = brand
        people = list(recent)
        # Someone chosen by address earlier (a link back after a test send) stays choosable.
        asked = str(self.data.get("subscriber", ""))
        if asked.isdigit() and all(s.pk != int(asked) for s in people):
            people += list(Subscriber.objects.filter(brand=brand, pk=int(asked)).only("pk", "email", "name"))
        choices = [("", _("The sample person"))]
        choices += [(str(s.pk), f"{s.email} — {s.name}" if s.name else s.email) for s in people]
        self.fields["subscriber"].choices = choices  # type: ignore[attr-defined]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        data["person"] = None
        raw = data.get("email", "").strip()
        if raw:
            try:
                email = normalise_email(raw)
            except forms.ValidationError:
                email = raw.lower()
            person = Subscriber.objects.filter(brand=self.brand, email=email).first()
            if person is None:
                self.add_error("email", _("This brand has no subscriber with that address."))
            data["person"] = person
        elif data.get("subscriber"):
            data["person"] = Subscriber.objects.filter(brand=self.brand, pk=data["subscriber"]).first()
        return data


class TestSendForm(forms.Form):
    to = forms.MultipleChoiceField(
        label=gettext_lazy("Send a test to"),
        widget=forms.CheckboxSelectMultiple,
        error_messages={"required": gettext_lazy("Choose at least one address.")},
    )
    subscriber = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, brand: Brand, addresses: list[tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.brand = brand
        # Only the team's verified addresses are choices: anything else is "not a valid choice".
        self.fields["to"].choices = addresses  # type: ignore[attr-defined]

    def clean_subscriber(self) -> Subscriber | None:
        pk = self.cleaned_data.get("subscriber")
        if pk is None:
            return None
        person = Subscriber.objects.filter(brand=self.brand, pk=pk).first()
        if person is None:
            raise forms.ValidationError(_("Choose the preview subscriber again."))
        return person


def recent_recipients(queryset: QuerySet[Subscriber], limit: int = 50) -> list[Subscriber]:
    """The newest eligible recipients, for the preview's select."""
    return list(queryset.order_by("-created_at", "-pk").only("pk", "email", "name")[:limit])
