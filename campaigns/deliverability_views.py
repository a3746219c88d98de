"""The deliverability page: the brand's daily sending figures and rates, its sending alerts, and the
messages refused by policy; the owner's acknowledgement of an alert.

Every member reads; only owners acknowledge (which lifts a stop). The figures
come from the per-day counters (``SendingDay``), so the page reads 30 rows, not
the events.
"""

from __future__ import annotations

from datetime import date, timedelta

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from audiences.access import Role, brand_view, current_user, get_for_brand
from audiences.charts import Series, Threshold, daily_bars, percent
from audiences.models import Brand
from campaigns import bounces
from campaigns.models import DeliveryEvent, SendingAlert, SendingDay

DAYS = 30
POLICY_ROWS = 50
COUNTERS = ["sent", "delivered", "hard_bounces", "soft_bounces", "complaints", "policy_failures"]


def _today(brand: Brand) -> date:
    """Today in the brand's time zone: the days the counters are kept in."""
    return timezone.localdate(timezone=bounces.zone(brand))


def _charts(axis: list[date], days: dict[date, SendingDay]) -> list[object]:
    """Messages sent, the complaint rate against its two thresholds, and the hard bounce rate.

    The same margins for all three, so a day sits at the same place in each.
    """
    empty = SendingDay()
    rows = [days.get(d, empty) for d in axis]
    complaint_rates = [bounces.rates(r)[0] for r in rows]
    bounce_rates = [bounces.rates(r)[1] for r in rows]
    warn, stop = settings.COMPLAINT_WARN_RATE, settings.COMPLAINT_STOP_RATE
    return [
        daily_bars(
            title=_("Messages sent per day, last %(days)s days") % {"days": DAYS},
            days=axis,
            series=[Series(_("Sent"), "#0b5cad", [r.sent for r in rows])],
            chart_id="sent-chart",
            axis_width=56,
            right_margin=96,
        ),
        daily_bars(
            title=_("Complaint rate per day against the warning (%(warn)s) and stop (%(stop)s) levels")
            % {"warn": percent(warn), "stop": percent(stop)},
            days=axis,
            series=[Series(_("Complaint rate"), "#7a1010", complaint_rates)],
            thresholds=[
                Threshold(_("warning %(rate)s") % {"rate": percent(warn)}, "#a84f00", warn),
                Threshold(_("stop %(rate)s") % {"rate": percent(stop)}, "#b3261e", stop),
            ],
            value_label=percent,
            chart_id="complaint-chart",
            floor=0,
            axis_width=56,
            right_margin=96,
        ),
        daily_bars(
            title=_("Hard bounce rate per day"),
            days=axis,
            series=[Series(_("Hard bounce rate"), "#a84f00", bounce_rates)],
            value_label=percent,
            chart_id="bounce-chart",
            floor=0.01,
            axis_width=56,
            right_margin=96,
        ),
    ]


def _table(axis: list[date], days: dict[date, SendingDay]) -> list[dict[str, object]]:
    """The charts' figures, one row per day with anything to show, newest first."""
    rows = []
    for day in reversed(axis):
        row = days.get(day)
        if row is None or not any(getattr(row, name) for name in COUNTERS):
            continue
        complaint_rate, bounce_rate = bounces.rates(row)
        reached = bounces.levels(row)
        level = str(reached[-1]) if reached else ""  # the highest
        rows.append(
            {
                "row": row,
                "complaint_rate": percent(complaint_rate),
                "bounce_rate": percent(bounce_rate),
                "level": level,
            }
        )
    return rows


@brand_view()
@require_GET
def deliverability(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    today = _today(brand)
    since = today - timedelta(days=DAYS - 1)
    axis = [since + timedelta(days=i) for i in range(DAYS)]
    days = {row.day: row for row in SendingDay.objects.filter(brand=brand, day__gte=since, day__lte=today)}
    totals = {name: sum(getattr(row, name) for row in days.values()) for name in COUNTERS}
    alerts = list(
        SendingAlert.objects.filter(brand=brand).select_related("acknowledged_by").order_by("-created_at")[:10]
    )
    for alert in alerts:
        alert.rate_text = percent(alert.complaint_rate)  # type: ignore[attr-defined]
    policy = DeliveryEvent.objects.filter(
        brand=brand, kind=DeliveryEvent.Kind.POLICY, occurred_at__gte=timezone.now() - timedelta(days=DAYS)
    ).order_by("-occurred_at", "-pk")[:POLICY_ROWS]
    context = {
        "days": DAYS,
        "charts": _charts(axis, days),
        "table": _table(axis, days),
        "totals": totals,
        "complaint_rate": percent(totals["complaints"] / totals["sent"]) if totals["sent"] else None,
        "bounce_rate": percent(totals["hard_bounces"] / totals["sent"]) if totals["sent"] else None,
        "warn_rate": percent(settings.COMPLAINT_WARN_RATE),
        "stop_rate": percent(settings.COMPLAINT_STOP_RATE),
        "alerts": alerts,
        "policy_failures": list(policy),
        "policy_rows": POLICY_ROWS,
    }
    return render(request, "dashboard/deliverability.html", context)


@brand_view(Role.OWNER)
@require_POST
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    """The owner has seen the alert; a stop is lifted (paused campaigns stay paused until resumed)."""
    alert = get_for_brand(SendingAlert, request, pk=pk)
    if alert.acknowledged_at is not None:
        messages.info(request, _("This alert was already acknowledged."))
    else:
        alert = bounces.acknowledge(alert=alert, user=current_user(request))
        if alert.level == SendingAlert.Level.STOP:
            messages.success(
                request,
                _(
                    "Acknowledged: campaigns may start again. Paused campaigns stay paused until you resume them, "
                    "once the cause of the complaints is fixed."
                ),
            )
        else:
            messages.success(request, _("Acknowledged."))
    return redirect("dash:deliverability", brand_slug=request.brand.slug)  # type: ignore[attr-defined]


urlpatterns = [
    path("deliverability/", deliverability, name="deliverability"),
    path("deliverability/alerts/<int:pk>/acknowledge/", alert_acknowledge, name="alert_acknowledge"),
]
