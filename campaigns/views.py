"""The team's campaign pages: list, editor, live count, preview and test send, schedule, progress.

Every member reads; editors and owners change things. Each POST validates a
form, calls one operation (``campaigns.compose`` before sending,
``campaigns.delivery`` from scheduling on) and redirects. A brand's template
that fails shows its problems with their lines, never a 500.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from allauth.account.models import EmailAddress
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count, IntegerField, OuterRef, Prefetch, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from audiences import ratelimit
from audiences.access import Role, brand_view, can, current_user, get_for_brand
from audiences.models import Audience, Brand
from campaigns import compose, delivery, rendering, targeting
from campaigns.forms import (
    FIELD_CHOICES,
    RULE_ROWS,
    CampaignForm,
    PreviewForm,
    ScheduleForm,
    TargetingForm,
    TestSendForm,
    recent_recipients,
    rule_rows_for,
)
from campaigns.models import Campaign, Delivery

log = logging.getLogger(__name__)

Status = Campaign.Status
TEST_SENDS_PER_HOUR = 10
# Statuses whose numbers still move: the progress page refreshes itself while in one of them.
LIVE = {Status.SCHEDULED, Status.SENDING}
MAX_RULE_ROWS = 50
_RULE_KEY = re.compile(r"^rule_(\d+)_")

# Why a delivery was skipped, in the team's words (the reasons ``delivery`` records).
REASONS = {
    "cancelled": gettext_lazy("Campaign cancelled before it reached them"),
    "unsubscribed": gettext_lazy("Unsubscribed"),
    "blocked": gettext_lazy("Blocked"),
    "pending": gettext_lazy("Not confirmed"),
    "suppressed": gettext_lazy("On the suppression list"),
    "paused": gettext_lazy("Paused their emails"),
    "left the audience": gettext_lazy("Left the audiences"),
    "frequency limit or segment": gettext_lazy("Frequency limit reached, or no longer in the segment"),
    "not eligible": gettext_lazy("No longer eligible"),
}
OUTCOMES = [
    ("sent", gettext_lazy("Sent"), "#2e7d4f"),
    ("skipped", gettext_lazy("Skipped"), "#5f6b7a"),
    ("failed", gettext_lazy("Failed"), "#b3261e"),
    ("bounced", gettext_lazy("Bounced"), "#a84f00"),
    ("complained", gettext_lazy("Complained"), "#7a1010"),
    ("remaining", gettext_lazy("Remaining"), "#0b5cad"),
]


def _bound(request: HttpRequest) -> Any:
    """POST data on a POST, else None: an empty POST is still validated (and fails)."""
    return request.POST if request.method == "POST" else None


def _campaign(request: HttpRequest, pk: int) -> Campaign:
    return get_for_brand(Campaign.objects.select_related("brand"), request, pk=pk)


def _brand(request: HttpRequest) -> Brand:
    return request.brand  # type: ignore[attr-defined]


# --- List ------------------------------------------------------------------------------------


@brand_view()
@require_GET
def campaign_list(request: HttpRequest) -> HttpResponse:
    # A correlated count per campaign shown, not a GROUP BY over every delivery of the brand.
    sent = (
        Delivery.objects.filter(campaign=OuterRef("pk"), status=Delivery.Status.SENT)
        .order_by()
        .values("campaign")
        .annotate(n=Count("*"))
        .values("n")
    )
    campaigns = (
        Campaign.objects.filter(brand=_brand(request))
        .annotate(sent_count=Coalesce(Subquery(sent, output_field=IntegerField()), 0))
        .prefetch_related(Prefetch("audiences", queryset=Audience.objects.order_by("name")))
        .order_by("-created_at", "-pk")
    )
    page = Paginator(campaigns, 50).get_page(request.GET.get("page"))
    return render(request, "campaigns/list.html", {"page": page})


# --- Editor ----------------------------------------------------------------------------------


TEMPLATE_FIELDS = {
    "subject": gettext_lazy("Subject"),
    "preheader": gettext_lazy("Preheader"),
    "html_body": gettext_lazy("HTML body"),
    "text_body": gettext_lazy("Text body"),
}


def _by_field(problems: list[rendering.TemplateProblem]) -> dict[str, list[rendering.TemplateProblem]]:
    found: dict[str, list[rendering.TemplateProblem]] = defaultdict(list)
    for problem in problems:
        found[problem.field].append(problem)
    return dict(found)


def _in_words(problem: rendering.TemplateProblem) -> str:
    label = TEMPLATE_FIELDS.get(problem.field, problem.field)
    if problem.line:
        return _("%(field)s, line %(line)s: %(message)s") % {
            "field": label,
            "line": problem.line,
            "message": problem.message,
        }
    return _("%(field)s: %(message)s") % {"field": label, "message": problem.message}


def readiness(campaign: Campaign, template: list[rendering.TemplateProblem] | None = None) -> list[str]:
    """``delivery.problems`` in the team's words: template problems name the field's label and line."""
    template = rendering.check(campaign) if template is None else template
    raw = {str(p) for p in template}
    return [p for p in delivery.problems(campaign) if p not in raw] + [_in_words(p) for p in template]


def _save_error(form: CampaignForm, error: compose.ComposeError) -> None:
    form.add_error(error.field if error.field in form.fields else None, str(error))


def _editor(request: HttpRequest, form: CampaignForm, campaign: Campaign | None, *, status: int = 200) -> HttpResponse:
    count_url = (
        reverse("dash:campaign_count_for", args=[campaign.brand.slug, campaign.pk])
        if campaign
        else reverse("dash:campaign_count", args=[form.brand.slug])
    )
    context: dict[str, Any] = {"form": form, "campaign": campaign, "count_url": count_url}
    if campaign is not None and not form.is_bound:
        # What the saved draft would face at scheduling time, and each template problem at its field.
        template = rendering.check(campaign)
        context["template_problems"] = found = _by_field(template)
        for name in found:
            # Screen readers announce the problems with the field, as they do its help text.
            bound = form[name]
            described = [f"{bound.auto_id}_problems", *([f"{bound.auto_id}_helptext"] if bound.help_text else [])]
            form.fields[name].widget.attrs["aria-describedby"] = " ".join(described)
        context["problems"] = readiness(campaign, template)
        context["eligible"] = delivery.recipients(campaign).count()
    return render(request, "campaigns/edit.html", context, status=status)


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def campaign_new(request: HttpRequest) -> HttpResponse:
    brand = _brand(request)
    form = CampaignForm(_bound(request), brand=brand)
    if request.method == "POST" and form.is_valid():
        try:
            campaign = compose.create_campaign(brand=brand, user=current_user(request), **form.operation_kwargs())
        except compose.ComposeError as error:
            _save_error(form, error)
        else:
            messages.success(request, _("Draft saved."))
            return redirect("dash:campaign_edit", brand_slug=brand.slug, pk=campaign.pk)
    return _editor(request, form, None, status=400 if form.errors else 200)


@brand_view(Role.EDITOR)
@require_http_methods(["GET", "POST"])
def campaign_edit(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(request, pk)
    if campaign.status != Status.DRAFT:
        if campaign.status == Status.SCHEDULED:
            messages.error(request, _("Only a draft can be edited: unschedule the campaign first."))
        else:
            messages.error(request, _("A campaign that has started can't be edited."))
        return redirect("dash:campaign", brand_slug=campaign.brand.slug, pk=campaign.pk)
    rows = rule_rows_for(campaign.segment)
    form = CampaignForm(_bound(request), brand=campaign.brand, rows=rows, initial=CampaignForm.initial_for(campaign))
    if request.method == "POST" and form.is_valid():
        try:
            compose.update_campaign(campaign=campaign, user=current_user(request), **form.operation_kwargs())
        except compose.ComposeError as error:
            _save_error(form, error)
        else:
            messages.success(request, _("Draft saved."))
            return redirect("dash:campaign_edit", brand_slug=campaign.brand.slug, pk=campaign.pk)
    return _editor(request, form, campaign, status=400 if form.errors else 200)


@brand_view()
@require_GET
def campaign_count(request: HttpRequest, pk: int | None = None) -> JsonResponse:
    """The live count of eligible recipients for targeting not saved yet (the editor's script asks)."""
    brand = _brand(request)
    campaign = _campaign(request, pk) if pk is not None else None
    indexes = [int(m.group(1)) for key in request.GET if (m := _RULE_KEY.match(key))]
    rows = min(max([RULE_ROWS - 1, *indexes]) + 1, MAX_RULE_ROWS)
    form = TargetingForm(request.GET, brand=brand, rows=rows)
    if not form.is_valid():
        errors = [str(e) for field_errors in form.errors.values() for e in field_errors]
        return JsonResponse({"count": None, "errors": errors}, status=400)
    count = compose.count_eligible(
        brand=brand,
        audience_ids=[a.pk for a in form.cleaned_data["audiences"]],
        segment=form.cleaned_data["segment"],
        campaign_id=campaign.pk if campaign else None,
    )
    label = ngettext("%(n)s eligible recipient now", "%(n)s eligible recipients now", count) % {"n": count}
    return JsonResponse({"count": count, "label": label, "errors": []})


# --- The campaign's page: summary, schedule, status actions ------------------------------------


def describe_segment(segment: list[dict[str, str]]) -> list[str]:
    """Each rule in words, for people who read rather than edit."""
    labels = dict(FIELD_CHOICES)
    words = []
    for rule in segment:
        field = rule["field"]
        if field.startswith("attributes."):
            subject = _("attribute “%(key)s”") % {"key": field.removeprefix("attributes.")}
        else:
            subject = str(labels.get(field, field))
        op = str(targeting.OPS.get(rule["op"], rule["op"]))
        words.append(f"{subject} {op} {rule['value']}".strip() if rule["op"] != "is_set" else f"{subject} {op}")
    return words


def _detail(
    request: HttpRequest,
    campaign: Campaign,
    *,
    schedule_form: ScheduleForm | None = None,
    refused: list[str] | None = None,
    status: int = 200,
) -> HttpResponse:
    brand = campaign.brand
    context: dict[str, Any] = {
        "campaign": campaign,
        "audiences": list(campaign.audiences.order_by("name")),
        "rules": describe_segment(campaign.segment),
        "refused": refused or [],
    }
    if campaign.status in {Status.DRAFT, Status.SCHEDULED}:
        context["eligible"] = delivery.recipients(campaign).count()
    if campaign.status == Status.DRAFT:
        context["problems"] = readiness(campaign)
        context["schedule_form"] = schedule_form or ScheduleForm(time_zone=brand.time_zone)
    else:
        context["progress"] = delivery.progress(campaign)
    return render(request, "campaigns/detail.html", context, status=status)


@brand_view()
@require_GET
def campaign_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _detail(request, _campaign(request, pk))


@brand_view(Role.EDITOR)
@require_POST
def campaign_schedule(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(request, pk)
    brand = campaign.brand
    form = ScheduleForm(request.POST, time_zone=brand.time_zone)
    if not form.is_valid():
        return _detail(request, campaign, schedule_form=form, status=400)
    try:
        campaign = delivery.schedule(campaign=campaign, user=current_user(request), at=form.cleaned_data["at"])
    except delivery.CampaignError as error:
        # Each reason on its own line; a refusal that isn't about readiness (not a draft) as said.
        refused = readiness(campaign) or [str(error)]
        return _detail(request, campaign, schedule_form=form, refused=refused, status=400)
    at = form.cleaned_data["at"]
    if at is None:
        messages.success(request, _("Sending starts now."))
    else:
        when = at.strftime("%Y-%m-%d %H:%M")
        messages.success(request, _("Scheduled for %(when)s (%(zone)s).") % {"when": when, "zone": brand.time_zone})
    return redirect("dash:campaign_progress", brand_slug=brand.slug, pk=campaign.pk)


def _act(request: HttpRequest, pk: int, operation: Callable[..., Campaign], done: str, then: str) -> HttpResponse:
    """One status action: call the delivery operation, say what happened, go back."""
    campaign = _campaign(request, pk)
    try:
        operation(campaign=campaign, user=current_user(request))
    except delivery.CampaignError as error:
        messages.error(request, str(error))
    else:
        messages.success(request, done)
    return redirect(then, brand_slug=campaign.brand.slug, pk=campaign.pk)


@brand_view(Role.EDITOR)
@require_POST
def campaign_unschedule(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, delivery.unschedule, _("Back to draft: nothing will be sent."), "dash:campaign")


@brand_view(Role.EDITOR)
@require_POST
def campaign_pause(request: HttpRequest, pk: int) -> HttpResponse:
    done = _("Paused: messages already handed over finish, no new ones start.")
    return _act(request, pk, delivery.pause, done, "dash:campaign_progress")


@brand_view(Role.EDITOR)
@require_POST
def campaign_resume(request: HttpRequest, pk: int) -> HttpResponse:
    return _act(request, pk, delivery.resume, _("Sending again."), "dash:campaign_progress")


@brand_view(Role.EDITOR)
@require_POST
def campaign_cancel(request: HttpRequest, pk: int) -> HttpResponse:
    done = _("Cancelled: nothing more will be sent.")
    return _act(request, pk, delivery.cancel, done, "dash:campaign_progress")


# --- Preview and test send ---------------------------------------------------------------------


def _team_addresses(request: HttpRequest, brand: Brand) -> list[tuple[str, str]]:
    """The verified addresses of the brand's team, the current member's own first."""
    me = current_user(request)
    rows = (
        EmailAddress.objects.filter(verified=True, user__memberships__brand=brand)
        .select_related("user")
        .order_by("email")
    )
    own = [(a.email, _("%(email)s (you)") % {"email": a.email}) for a in rows if a.user_id == me.pk]
    others = [(a.email, a.email) for a in rows if a.user_id != me.pk]
    return [*own, *others]


def _preview(
    request: HttpRequest, campaign: Campaign, *, test_form: TestSendForm | None = None, status: int = 200
) -> HttpResponse:
    brand = campaign.brand
    recent = recent_recipients(delivery.recipients(campaign))
    form = PreviewForm(request.GET or None, brand=brand, recent=recent)
    person = form.cleaned_data["person"] if form.is_valid() else None
    if test_form is not None and getattr(test_form, "cleaned_data", None):
        person = test_form.cleaned_data.get("subscriber") or person
    # A person's real links act for them (unsubscribe, erase): only for members who may do that anyway.
    real_links = can(request.membership, Role.EDITOR)  # type: ignore[attr-defined]
    context: dict[str, Any] = {"campaign": campaign, "form": form, "person": person, "real_links": real_links}
    try:
        context["rendered"] = compose.render_preview(campaign=campaign, subscriber=person, real_links=real_links)
    except compose.RenderError as error:
        context["render_error"] = str(error)
        context["template_problems"] = [_in_words(p) for p in rendering.check(campaign)]
    addresses = _team_addresses(request, brand)
    own = [email for email, label in addresses if label != email]
    context["addresses"] = addresses
    context["test_form"] = test_form or TestSendForm(
        brand=brand, addresses=addresses, initial={"to": own, "subscriber": person.pk if person else None}
    )
    return render(request, "campaigns/preview.html", context, status=status)


@brand_view()
@require_GET
def campaign_preview(request: HttpRequest, pk: int) -> HttpResponse:
    return _preview(request, _campaign(request, pk))


@brand_view(Role.EDITOR)
@require_POST
def campaign_test(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(request, pk)
    brand = campaign.brand
    user = current_user(request)
    form = TestSendForm(request.POST, brand=brand, addresses=_team_addresses(request, brand))
    if not form.is_valid():
        return _preview(request, campaign, test_form=form, status=400)
    if not ratelimit.hit("campaign-test", str(user.pk), limit=TEST_SENDS_PER_HOUR, window_seconds=3600):
        form.add_error(None, _("You sent %(n)s tests in the last hour; wait a little.") % {"n": TEST_SENDS_PER_HOUR})
        return _preview(request, campaign, test_form=form, status=429)
    person = form.cleaned_data["subscriber"]
    try:
        compose.send_test(campaign=campaign, user=user, to=form.cleaned_data["to"], subscriber=person)
    except compose.ComposeError as error:
        form.add_error(None, str(error))
        return _preview(request, campaign, test_form=form, status=400)
    to = form.cleaned_data["to"]
    messages.success(
        request,
        ngettext("Test sent to %(to)s.", "Tests sent to %(to)s.", len(to)) % {"to": ", ".join(to)},
    )
    url = reverse("dash:campaign_preview", args=[brand.slug, campaign.pk])
    return redirect(f"{url}?subscriber={person.pk}" if person else url)


# --- Progress ------------------------------------------------------------------------------------


def _eta(seconds: int | None, remaining: int) -> str:
    if seconds is None or not remaining:
        return "—"
    if seconds < 60:
        return _("less than a minute")
    minutes = round(seconds / 60)
    if minutes < 90:
        return ngettext("about %(n)s minute", "about %(n)s minutes", minutes) % {"n": minutes}
    return _("about %(h)s h %(m)s min") % {"h": minutes // 60, "m": minutes % 60}


def _summary(campaign: Campaign, progress: dict[str, Any]) -> str:
    """One sentence for the aria-live line."""
    status = str(Status(campaign.status).label)
    done = progress["total"] - progress["remaining"]
    return _("%(status)s: %(done)s of %(total)s handled (%(percent)s%%), %(eta)s left.") % {
        "status": status,
        "done": done,
        "total": progress["total"],
        "percent": progress["percent"],
        "eta": _eta(progress["eta_seconds"], progress["remaining"]) if progress["remaining"] else _("nothing"),
    }


def outcome_chart(progress: dict[str, Any], *, title: str) -> SafeString:
    """Horizontal bars, one per outcome, labelled with their counts (readable without colour)."""
    rows = [(str(label), colour, int(progress[key])) for key, label, colour in OUTCOMES if progress[key]]
    width, label_w, row_h, value_w = 640, 130, 30, 70
    peak = max([1, *(n for _l, _c, n in rows)])
    bars = [
        (
            10,
            i * row_h + 20,
            label,
            label_w,
            i * row_h + 6,
            f"{max((width - label_w - value_w) * n / peak, 1):.1f}",
            row_h - 10,
            colour,
            f"{label}: {n}",
            f"{label_w + (width - label_w - value_w) * n / peak + 6:.1f}",
            i * row_h + 20,
            n,
        )
        for i, (label, colour, n) in enumerate(rows)
    ]
    height = max(len(rows), 1) * row_h + 6
    return format_html(
        '<svg class="chart" viewBox="0 0 {} {}" role="img" aria-labelledby="outcome-title">'
        '<title id="outcome-title">{}</title>{}</svg>',
        width,
        height,
        title,
        format_html_join(
            "",
            '<text x="{}" y="{}">{}</text>'
            '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>'
            '<text x="{}" y="{}">{}</text>',
            bars,
        ),
    )


def _reasons(campaign: Campaign) -> list[dict[str, Any]]:
    """Skipped and failed deliveries grouped by reason, most common first."""
    rows = (
        Delivery.objects.filter(campaign=campaign, status__in=[Delivery.Status.SKIPPED, Delivery.Status.FAILED])
        .values("status", "reason")
        .annotate(n=Count("id"))
        .order_by("-n", "status", "reason")[:20]
    )
    return [
        {
            "status": Delivery.Status(row["status"]).label,
            "reason": REASONS.get(row["reason"], row["reason"] or "—"),
            "n": row["n"],
        }
        for row in rows
    ]


def _progress_payload(campaign: Campaign) -> dict[str, Any]:
    progress = delivery.progress(campaign)
    return {
        **progress,
        "status_label": str(Status(campaign.status).label),
        "eta": _eta(progress["eta_seconds"], progress["remaining"]),
        "summary": _summary(campaign, progress),
        "live": campaign.status in LIVE,
    }


@brand_view()
@require_GET
def campaign_progress(request: HttpRequest, pk: int) -> HttpResponse:
    campaign = _campaign(request, pk)
    progress = _progress_payload(campaign)
    context: dict[str, Any] = {
        "campaign": campaign,
        "progress": progress,
        "refresh": progress["live"] and request.GET.get("refresh") != "0",
    }
    if not progress["live"] and progress["total"]:
        context["chart"] = outcome_chart(progress, title=_("Deliveries per outcome"))
        context["reasons"] = _reasons(campaign)
    return render(request, "campaigns/progress.html", context)


@brand_view()
@require_GET
def campaign_progress_json(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse(_progress_payload(_campaign(request, pk)))
