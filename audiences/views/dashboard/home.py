"""The brand picker and the brand's overview page."""

from __future__ import annotations

from datetime import date, timedelta

from django.contrib.auth.decorators import login_required
from django.db.models import Count
from django.db.models.functions import TruncDate
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.utils.translation import gettext as _

from audiences import imports, team
from audiences.access import brand_view, current_user
from audiences.charts import Series, daily_bars
from audiences.models import ConsentEvent, Membership, Subscriber


@login_required
def picker(request: HttpRequest) -> HttpResponse:
    """Where sign-in lands: an open invitation first, else the only brand, else a list."""
    invitation = team.open_invitation_from_session(request)
    if invitation is not None:
        from audiences.accounts import INVITATION_SESSION_KEY

        return redirect("invitation", token=request.session[INVITATION_SESSION_KEY])
    memberships = list(
        Membership.objects.filter(user=current_user(request)).select_related("brand").order_by("brand__name")
    )
    if len(memberships) == 1:
        return redirect("dash:home", brand_slug=memberships[0].brand.slug)
    return render(request, "dashboard/picker.html", {"memberships": memberships})


def _per_day(brand_id: int, kind: str, since: date) -> dict[date, int]:
    rows = (
        ConsentEvent.objects.filter(brand_id=brand_id, kind=kind, created_at__date__gte=since)
        .annotate(day=TruncDate("created_at"))
        .values("day")
        .annotate(n=Count("id"))
    )
    return {row["day"]: row["n"] for row in rows}


@brand_view()
def overview(request: HttpRequest) -> HttpResponse:
    brand = request.brand  # type: ignore[attr-defined]
    days = 90 if request.GET.get("days") == "90" else 30
    today = timezone.localdate()
    since = today - timedelta(days=days - 1)
    axis = [since + timedelta(days=i) for i in range(days)]
    confirmed = _per_day(brand.pk, ConsentEvent.Kind.CONFIRMED, since)
    left = _per_day(brand.pk, ConsentEvent.Kind.UNSUBSCRIBED, since)
    chart = daily_bars(
        title=_("Confirmed signups and unsubscribes per day, last %(days)s days") % {"days": days},
        days=axis,
        series=[
            Series(_("Confirmed signups"), "#0b5cad", [confirmed.get(d, 0) for d in axis]),
            Series(_("Unsubscribes"), "#c2410c", [left.get(d, 0) for d in axis]),
        ],
    )
    by_status = dict(
        Subscriber.objects.filter(brand=brand).values_list("status").annotate(n=Count("id")).values_list("status", "n")
    )
    statuses = [(label, by_status.get(value, 0)) for value, label in Subscriber.Status.choices]
    recent = ConsentEvent.objects.filter(brand=brand).select_related("subscriber").order_by("-created_at", "-id")[:10]
    context = {
        "days": days,
        "chart": chart,
        "table": [(d, confirmed.get(d, 0), left.get(d, 0)) for d in axis if confirmed.get(d) or left.get(d)],
        "totals": (sum(confirmed.values()), sum(left.values())),
        "statuses": statuses,
        "recent": recent,
        "jobs": imports.running(brand=brand),
    }
    return render(request, "dashboard/overview.html", context)


urlpatterns = [path("", overview, name="home")]
