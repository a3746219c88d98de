"""The deliverability page (daily figures, rates against the thresholds, alerts, refusals by
policy), the owner's acknowledgement, and the sending-alert banner on every page of the brand."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audiences.models import AuditEvent, Brand, Membership
from campaigns import bounces
from campaigns.deliverability_views import _today
from campaigns.models import DeliveryEvent, SendingAlert
from tests.conftest import db_snapshot

PAGE = "/b/acme/deliverability/"


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


def alert(brand: Brand, level: str, day: date, *, complaints: int = 4, sent: int = 1000) -> SendingAlert:
    """An alert as the complaint-rate check raises it (``bounces`` processing) for ``day``."""
    return SendingAlert.objects.create(
        brand=brand,
        level=level,
        day=day,
        complaint_rate=complaints / sent,
        bounce_rate=0.01,
        sent=sent,
        complaints=complaints,
    )


def policy_refusal(brand: Brand | None, *, days_ago: int, status: str = "5.7.26", text: str = "") -> DeliveryEvent:
    return DeliveryEvent.objects.create(
        brand=brand,
        provider="postmark",
        event_id=f"policy-{days_ago}-{status}-{brand.pk if brand else 0}",
        event_type="bounced",
        smtp_status=status,
        description=text or f"{status} Unauthenticated email is not accepted due to the domain's DMARC policy",
        occurred_at=timezone.now() - timedelta(days=days_ago),
        kind=DeliveryEvent.Kind.POLICY,
        processed_at=timezone.now(),
    )


# --- The page ---------------------------------------------------------------------


def test_it_shows_the_last_30_days_as_charts_and_a_table_with_the_thresholds(
    client: Client, viewer: User, brand: Brand, other_brand: Brand
) -> None:
    today = _today(brand)
    bounces.count(brand.pk, today, sent=2000, delivered=1990, hard_bounces=10, complaints=8)
    bounces.count(brand.pk, today - timedelta(days=1), sent=1000, soft_bounces=3, complaints=1)
    bounces.count(brand.pk, today - timedelta(days=40), sent=5000, complaints=500)  # too old to show
    bounces.count(other_brand.pk, today, sent=9999, complaints=99)
    client.force_login(viewer)
    response = client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    totals = response.context["totals"]
    assert (totals["sent"], totals["hard_bounces"], totals["soft_bounces"], totals["complaints"]) == (3000, 10, 3, 9)
    assert response.context["complaint_rate"] == "0.30%"
    assert response.context["bounce_rate"] == "0.33%"
    # Three charts, each with its own title id; the complaint chart draws both thresholds.
    for chart_id in ["sent-chart", "complaint-chart", "bounce-chart"]:
        assert f'aria-labelledby="{chart_id}-title"' in html
    assert "warning 0.10%" in html
    assert "stop 0.30%" in html
    assert 'stroke-dasharray="6 4"' in html
    assert "Complaint rate " + f"{today:%Y-%m-%d}: 0.40%" in html
    # The table twin: newest day first, a day at the stop level says so in words.
    days = [(t["row"].day, t["row"].sent, t["complaint_rate"], t["level"]) for t in response.context["table"]]
    assert days == [(today, 2000, "0.40%", "stop"), (today - timedelta(days=1), 1000, "0.10%", "")]
    assert "at the stop level" in html
    assert "9,999" not in html
    assert '<a href="/b/acme/deliverability/" aria-current="page">Deliverability</a>' in html


def test_a_brand_that_sent_nothing_gets_empty_charts_not_an_error(client: Client, viewer: User) -> None:
    client.force_login(viewer)
    response = client.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Nothing sent in this period." in html
    assert "No alerts" in html
    assert "No refusals by policy in the last 30 days." in html


def test_it_lists_this_brands_recent_refusals_by_policy_as_a_sending_problem(
    client: Client, viewer: User, brand: Brand, other_brand: Brand
) -> None:
    policy_refusal(brand, days_ago=1)
    policy_refusal(brand, days_ago=3, status="5.7.1", text="Service unavailable; client host blocked using Spamhaus")
    policy_refusal(brand, days_ago=45, status="5.7.9")
    policy_refusal(other_brand, days_ago=1, status="5.7.7", text="rival's problem")
    DeliveryEvent.objects.create(
        brand=brand, provider="x", event_id="soft", event_type="deferred", kind=DeliveryEvent.Kind.SOFT_BOUNCE
    )
    client.force_login(viewer)
    response = client.get(PAGE)
    assert [e.smtp_status for e in response.context["policy_failures"]] == ["5.7.26", "5.7.1"]
    html = response.content.decode()
    assert "DMARC" in html
    assert "client host blocked using Spamhaus" in html
    assert "rival&#x27;s problem" not in html
    assert "A sending problem to fix" in html


def test_owners_see_open_alerts_with_an_acknowledge_button_and_viewers_without(
    client: Client, owner: User, viewer: User, brand: Brand
) -> None:
    today = _today(brand)
    stop = alert(brand, SendingAlert.Level.STOP, today)
    done = alert(brand, SendingAlert.Level.WARNING, today - timedelta(days=5), complaints=2)
    SendingAlert.objects.filter(pk=done.pk).update(acknowledged_at=timezone.now(), acknowledged_by=owner)
    button = f'action="/b/acme/deliverability/alerts/{stop.pk}/acknowledge/"'
    client.force_login(owner)
    html = client.get(PAGE).content.decode()
    assert button in html
    assert "Acknowledged by alice@acme.example" in html
    assert f'action="/b/acme/deliverability/alerts/{done.pk}/acknowledge/"' not in html
    client.force_login(viewer)
    html = client.get(PAGE).content.decode()
    assert button not in html
    assert "Open: an owner must acknowledge it" in html


# --- Acknowledging --------------------------------------------------------------------


def test_an_owner_acknowledges_the_stop_and_sending_may_start_again(client: Client, owner: User, brand: Brand) -> None:
    today = _today(brand)
    warning = alert(brand, SendingAlert.Level.WARNING, today, complaints=2)
    stop = alert(brand, SendingAlert.Level.STOP, today)
    assert bounces.stopped(brand) == stop
    client.force_login(owner)
    response = client.post(f"/b/acme/deliverability/alerts/{stop.pk}/acknowledge/", follow=True)
    assert response.redirect_chain == [(PAGE, 302)]
    stop.refresh_from_db()
    warning.refresh_from_db()
    assert stop.acknowledged_by == owner
    assert stop.acknowledged_at is not None
    assert warning.acknowledged_at is not None  # everything open up to the stop is closed with it
    assert bounces.stopped(brand) is None
    assert AuditEvent.objects.filter(action="sending.acknowledged", user=owner).exists()
    (message,) = response.context["messages"]
    assert "campaigns may start again" in str(message)
    assert "Sending is stopped" not in response.content.decode()


def test_acknowledging_twice_changes_nothing(client: Client, owner: User, brand: Brand) -> None:
    stop = alert(brand, SendingAlert.Level.STOP, _today(brand))
    client.force_login(owner)
    client.post(f"/b/acme/deliverability/alerts/{stop.pk}/acknowledge/")
    before = db_snapshot()
    response = client.post(f"/b/acme/deliverability/alerts/{stop.pk}/acknowledge/", follow=True)
    assert "already acknowledged" in str(list(response.context["messages"])[-1])
    assert db_snapshot() == before


@pytest.mark.parametrize("persona", ["viewer", "editor"])
def test_only_owners_acknowledge(client: Client, persona: str, request: pytest.FixtureRequest, brand: Brand) -> None:
    stop = alert(brand, SendingAlert.Level.STOP, _today(brand))
    client.force_login(request.getfixturevalue(persona))
    before = db_snapshot()
    assert client.post(f"/b/acme/deliverability/alerts/{stop.pk}/acknowledge/").status_code == 403
    assert db_snapshot() == before
    assert bounces.stopped(brand) == stop


def test_another_brands_alert_is_a_404(client: Client, owner: User, brand: Brand, other_brand: Brand) -> None:
    theirs = alert(other_brand, SendingAlert.Level.STOP, _today(other_brand))
    client.force_login(owner)
    before = db_snapshot()
    assert client.post(f"/b/acme/deliverability/alerts/{theirs.pk}/acknowledge/").status_code == 404
    assert client.post(f"/b/rival/deliverability/alerts/{theirs.pk}/acknowledge/").status_code == 404
    assert db_snapshot() == before


def test_an_outsider_gets_404_and_a_get_changes_nothing(
    client: Client, outsider: User, owner: User, brand: Brand
) -> None:
    stop = alert(brand, SendingAlert.Level.STOP, _today(brand))
    client.force_login(outsider)
    assert client.get(PAGE).status_code == 404
    assert client.post(f"/b/acme/deliverability/alerts/{stop.pk}/acknowledge/").status_code == 404
    client.force_login(owner)
    assert client.get(f"/b/acme/deliverability/alerts/{stop.pk}/acknowledge/").status_code == 405
    assert bounces.stopped(brand) == stop


# --- The banner -----------------------------------------------------------------------

PAGES = ["/b/acme/", "/b/acme/subscribers/", "/b/acme/suppressions/", "/b/acme/campaigns/", PAGE]


def test_a_warning_shows_on_every_page_of_the_brand_for_everyone(
    client: Client, viewer: User, brand: Brand, other_brand: Brand
) -> None:
    day = _today(brand) - timedelta(days=1)
    alert(brand, SendingAlert.Level.WARNING, day, complaints=2)
    client.force_login(viewer)
    for url in PAGES:
        html = client.get(url).content.decode()
        assert "Complaint rate warning" in html, url
        assert f"The complaint rate was above 0.10% on {day:%Y-%m-%d}: 0.20%." in html, url
        assert 'href="/b/acme/deliverability/">See deliverability</a>' in html, url
        assert "acknowledge/" not in html, url
        assert "Sending is stopped" not in html, url


def test_a_stop_shows_with_the_owners_button(client: Client, owner: User, editor: User, brand: Brand) -> None:
    today = _today(brand)
    alert(brand, SendingAlert.Level.WARNING, today, complaints=2)
    stop = alert(brand, SendingAlert.Level.STOP, today)
    client.force_login(editor)
    html = client.get("/b/acme/subscribers/").content.decode()
    assert "Sending is stopped until an owner acknowledges" in html
    assert "Complaint rate warning" not in html  # the stop is the one that matters
    assert "acknowledge/" not in html
    client.force_login(owner)
    html = client.get("/b/acme/subscribers/").content.decode()
    assert f'action="/b/acme/deliverability/alerts/{stop.pk}/acknowledge/"' in html
    assert "Acknowledge and lift the stop" in html


def test_no_banner_for_another_brands_alert_or_an_acknowledged_one(
    client: Client, owner: User, brand: Brand, other_brand: Brand
) -> None:
    alert(other_brand, SendingAlert.Level.STOP, _today(other_brand))
    seen = alert(brand, SendingAlert.Level.STOP, _today(brand))
    SendingAlert.objects.filter(pk=seen.pk).update(acknowledged_at=timezone.now(), acknowledged_by=owner)
    client.force_login(owner)
    html = client.get("/b/acme/").content.decode()
    assert "Sending is stopped" not in html
    assert "Complaint rate warning" not in html


def test_the_banner_costs_one_query(client: Client, owner: User, brand: Brand) -> None:
    client.force_login(owner)

    def alert_queries() -> list[dict[str, Any]]:
        with CaptureQueriesContext(connection) as captured:
            assert client.get("/b/acme/subscribers/").status_code == 200
        return [q for q in captured if "campaigns_sendingalert" in q["sql"]]

    assert len(alert_queries()) == 1
    alert(brand, SendingAlert.Level.WARNING, _today(brand))
    alert(brand, SendingAlert.Level.STOP, _today(brand))
    assert len(alert_queries()) == 1
