"""Template context for dashboard pages: the brand, the member's role, the navigation, the sending alert."""

from __future__ import annotations

from django.conf import settings
from django.db.models import Case, When
from django.http import HttpRequest
from django.urls import reverse
from django.utils.translation import gettext_lazy as _

from audiences.access import RANK, Role, current_user
from audiences.charts import percent
from audiences.models import Brand, Membership
from campaigns.models import SendingAlert

# (url name, label, lowest role that sees it)
NAV = [
    ("dash:audiences", _("Audiences"), Role.VIEWER),
    ("dash:forms", _("Forms"), Role.VIEWER),
    ("dash:subscribers", _("Subscribers"), Role.VIEWER),
    ("dash:suppressions", _("Suppression list"), Role.VIEWER),
    ("dash:campaigns", _("Campaigns"), Role.VIEWER),
    ("dash:deliverability", _("Deliverability"), Role.VIEWER),
    ("dash:imports", _("Imports"), Role.EDITOR),
    ("dash:team", _("Team"), Role.OWNER),
    ("dash:settings", _("Settings"), Role.OWNER),
    ("dash:audit", _("Audit log"), Role.OWNER),
]


def _nav(request: HttpRequest, rank: int) -> list[tuple[str, str, bool]]:
    slug = request.brand.slug  # type: ignore[attr-defined]
    home = reverse("dash:home", args=[slug])
    items = [(home, str(_("Overview")), request.path == home)]
    for name, label, role in NAV:
        if rank >= RANK[role]:
            url = reverse(name, args=[slug])
            items.append((url, str(label), request.path.startswith(url)))
    return items


def _sending_alert(brand: Brand) -> SendingAlert | None:
    """The alert the banner shows: the newest open stop, else the newest open warning (one small query).

    Acknowledging an alert closes every open alert of the brand up to it, so one
    banner and one button are enough.
    """
    alert = (
        SendingAlert.objects.filter(brand=brand, acknowledged_at__isnull=True)
        .order_by(Case(When(level=SendingAlert.Level.STOP, then=0), default=1), "-created_at")
        .first()
    )
    if alert is None:
        return None
    alert.rate_text = percent(alert.complaint_rate)  # type: ignore[attr-defined]
    return alert


def dashboard(request: HttpRequest) -> dict[str, object]:
    membership = getattr(request, "membership", None)
    if membership is None:
        return {}
    rank = RANK[Role(membership.role)]
    return {
        "brand": request.brand,  # type: ignore[attr-defined]
        "membership": membership,
        "can_edit": rank >= RANK[Role.EDITOR],
        "is_owner": rank >= RANK[Role.OWNER],
        "dash_nav": _nav(request, rank),
        "sending_alert": _sending_alert(request.brand),  # type: ignore[attr-defined]
        "complaint_warn_rate": percent(settings.COMPLAINT_WARN_RATE),
        "complaint_stop_rate": percent(settings.COMPLAINT_STOP_RATE),
        "user_memberships": Membership.objects.filter(user=current_user(request))
        .select_related("brand")
        .order_by("brand__name"),
    }
