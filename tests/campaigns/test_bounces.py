"""Processing what providers and bounce reports say (``campaigns/bounces.py``), on PostgreSQL.

Campaigns are really sent (eager tasks, the locmem mail backend); each report is
recorded with ``bounces.record`` as the webhook and the mailbox reader do, and
its processing (queued after commit) runs as the captured transaction commits.
Then the database, the consent log and the emails say what happened.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from audiences import consent, suppressions
from audiences.consent import Evidence, Outcome
from audiences.models import (
    Audience,
    AuditEvent,
    Brand,
    ConsentEvent,
    ConsumerEmail,
    Membership,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)
from campaigns import bounces, delivery, dsn, tasks
from campaigns.bounces import Report
from campaigns.delivery import CampaignError
from campaigns.models import Campaign, Delivery, DeliveryEvent, SendingAlert, SendingDay
from tests.campaigns.bounce_samples import BOUNCE_ADDRESS, sample
from tests.campaigns.test_delivery import HTML, confirmed
from tests.conftest import db_snapshot, signup_data

CONSUMER = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
TEAM = Evidence(actor=ConsentEvent.Actor.TEAM, source=ConsentEvent.Source.DASHBOARD)
OnCommit = Callable[[], AbstractContextManager[Any]]
Kind = DeliveryEvent.Kind
SIGNUP = "/s/acme/newsletter/"
T0 = datetime(2025, 11, 3, 9, 0, tzinfo=UTC)
_event_ids = count(1)

pytestmark = pytest.mark.django_db


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> OnCommit:
    return lambda: django_capture_on_commit_callbacks(execute=True)


@pytest.fixture(autouse=True)
def _bounce_address(settings: Any) -> None:
    settings.BOUNCE_ADDRESS = BOUNCE_ADDRESS


@pytest.fixture
def dana(signup_form: SignupForm, news: Audience, offers: Audience) -> Subscriber:
    return confirmed(signup_form, [news, offers], "dana@example.com")


def send(brand: Brand, audiences: list[Audience], owner: User, on_commit: OnCommit, name: str = "Weekly") -> Campaign:
    """A campaign sent now to the audiences, through the real operations (eager batches, locmem outbox)."""
    campaign = Campaign.objects.create(brand=brand, name=name, subject="News", html_body=HTML, created_by=owner)
    campaign.audiences.set(audiences)
    with on_commit():
        delivery.schedule(campaign=campaign, user=owner)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    return campaign


def delivery_of(campaign: Campaign, subscriber: Subscriber) -> Delivery:
    return Delivery.objects.select_related("subscriber").get(campaign=campaign, subscriber=subscriber)


@pytest.fixture
def sent(dana: Subscriber, news: Audience, owner: User, on_commit: OnCommit) -> Delivery:
    """Dana's message of a campaign sent a moment ago."""
    found = delivery_of(send(dana.brand, [news], owner, on_commit), dana)
    assert found.status == Delivery.Status.SENT
    return found


def messages_to(subscriber: Subscriber, n: int, owner: User, on_commit: OnCommit, audience: Audience) -> list[Delivery]:
    """``n`` campaigns sent to the subscriber, one after the other (the brand's frequency limit raised for it)."""
    Brand.objects.filter(pk=subscriber.brand_id).update(frequency_limit=n + 1)
    brand = Brand.objects.get(pk=subscriber.brand_id)
    return [delivery_of(send(brand, [audience], owner, on_commit, name=f"Issue {i}"), subscriber) for i in range(n)]


def report(d: Delivery, event_type: str, **fields: Any) -> Report:
    """A report about delivery ``d`` as a provider's webhook gives it (anymail metadata names the delivery)."""
    fields.setdefault("event_id", f"evt-{next(_event_ids)}")
    fields.setdefault("recipient", d.subscriber.email)
    fields.setdefault("delivery_id", d.pk)
    return Report(provider=fields.pop("provider", "postmark"), event_type=event_type, **fields)


def hard_bounce(d: Delivery, **fields: Any) -> Report:
    fields.setdefault("reject_reason", "bounced")
    fields.setdefault("smtp_status", "5.1.1")
    fields.setdefault("description", "550 5.1.1 User unknown")
    return report(d, "bounced", **fields)


def receive(r: Report, on_commit: OnCommit) -> DeliveryEvent:
    """Record the report; its processing runs (eagerly) as the transaction commits."""
    with on_commit():
        event = bounces.record(r)
    assert event is not None
    event.refresh_from_db()
    return event


def today(brand: Brand) -> date:
    return timezone.localtime(timezone.now(), bounces.zone(brand)).date()


ZERO = dict.fromkeys(["sent", "delivered", "hard_bounces", "soft_bounces", "complaints", "policy_failures"], 0)


def counters(brand: Brand, day: date) -> dict[str, int]:
    """The brand's SendingDay counters for ``day`` (zeros when nothing was counted)."""
    row = SendingDay.objects.filter(brand=brand, day=day).values(*ZERO).first()
    return {name: int(row[name]) if row else 0 for name in ZERO}


def suppression(subscriber: Subscriber) -> str | None:
    """The reason the subscriber's address is on the brand's suppression list, or None."""
    return (
        Suppression.objects.filter(brand_id=subscriber.brand_id, email_hash=subscriber.email_hash)
        .values_list("reason", flat=True)
        .first()
    )


def kinds(subscriber: Subscriber) -> list[str]:
    return list(subscriber.consent_events.order_by("pk").values_list("kind", flat=True))


# --- Classifying ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "reject_reason", "status", "kind"),
    [
        # Hard: anymail's reason, or a status saying the mailbox or domain does not exist.
        ("bounced", "bounced", "", Kind.BOUNCED),
        ("bounced", "invalid", "", Kind.BOUNCED),
        ("rejected", "invalid", "", Kind.BOUNCED),
        ("rejected", "bounced", "", Kind.BOUNCED),
        ("bounced", "", "5.1.1", Kind.BOUNCED),
        ("bounced", "", "5.1.2", Kind.BOUNCED),
        ("bounced", "", "5.1.3", Kind.BOUNCED),
        ("bounced", "", "5.1.6", Kind.BOUNCED),
        ("rejected", "other", "5.1.1", Kind.BOUNCED),
        # Complaints.
        ("complained", "spam", "", Kind.COMPLAINED),
        ("complained", "", "", Kind.COMPLAINED),
        # Policy (x.7.x): never the recipient's fault, whatever else the report says.
        ("bounced", "bounced", "5.7.1", Kind.POLICY),
        ("bounced", "invalid", "5.7.26", Kind.POLICY),
        ("rejected", "", "5.7.1", Kind.POLICY),
        ("bounced", "", "4.7.0", Kind.POLICY),
        ("rejected", "blocked", "", Kind.POLICY),
        ("rejected", "spam", "", Kind.POLICY),
        # Soft: deferrals, any 4.x.x, and permanent failures that are not about the address.
        ("deferred", "", "4.2.2", Kind.SOFT_BOUNCE),
        ("deferred", "", "", Kind.SOFT_BOUNCE),
        ("deferred", "bounced", "5.1.1", Kind.SOFT_BOUNCE),  # not final yet
        ("bounced", "bounced", "4.4.1", Kind.SOFT_BOUNCE),
        ("bounced", "", "4.2.2", Kind.SOFT_BOUNCE),
        ("bounced", "", "5.2.2", Kind.SOFT_BOUNCE),
        ("bounced", "timed_out", "", Kind.SOFT_BOUNCE),
        ("bounced", "", "", Kind.SOFT_BOUNCE),
        # Everything else is recorded, and acted on only where said.
        ("delivered", "", "2.0.0", Kind.DELIVERED),
        ("opened", "", "", Kind.OPENED),
        ("clicked", "", "", Kind.CLICKED),
        ("unsubscribed", "", "", Kind.UNSUBSCRIBED),
        ("queued", "", "", Kind.OTHER),
        ("sent", "", "", Kind.OTHER),
        ("failed", "", "", Kind.OTHER),
        ("unknown", "", "", Kind.OTHER),
    ],
)
def test_it_classifies_each_kind_of_report(event_type: str, reject_reason: str, status: str, kind: str) -> None:
    event = DeliveryEvent(event_type=event_type, reject_reason=reject_reason, smtp_status=status)

    assert bounces.classify(event) == kind


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("postfix-5.1.1.eml", [Kind.BOUNCED]),
        ("gmail-dsn.eml", [Kind.BOUNCED]),
        ("microsoft-dsn.eml", [Kind.BOUNCED]),  # 5.1.10: null MX, the domain takes no mail
        ("global-dsn.eml", [Kind.BOUNCED]),
        ("plain-bounce.eml", [Kind.BOUNCED]),
        ("qmail-bounce.eml", [Kind.BOUNCED]),
        ("exim-dsn.eml", [Kind.BOUNCED, Kind.SOFT_BOUNCE]),  # 5.1.1, and 5.2.1 "mailbox disabled"
        ("arf-abuse.eml", [Kind.COMPLAINED]),
        ("arf-headers-only.eml", [Kind.COMPLAINED]),
        ("policy-5.7.1.eml", [Kind.POLICY]),
        ("delayed-4.2.2.eml", [Kind.SOFT_BOUNCE]),
    ],
)
def test_it_classifies_the_bounce_and_feedback_reports_read_from_a_mailbox(name: str, expected: list[str]) -> None:
    reports = dsn.parse(sample(name), provider="mailbox")

    recorded = [bounces.record(r) for r in reports]

    assert [bounces.classify(e) for e in recorded if e is not None] == expected


# --- What each event does ---------------------------------------------------------------------------


def test_a_hard_bounce_blocks_and_suppresses_the_address_at_once(
    sent: Delivery, dana: Subscriber, brand: Brand, news: Audience, on_commit: OnCommit
) -> None:
    event = receive(hard_bounce(sent), on_commit)

    assert (event.kind, event.delivery_id, event.subscriber_id, event.brand_id) == (
        "bounced",
        sent.pk,
        dana.pk,
        brand.pk,
    )
    assert event.processed_at is not None
    sent.refresh_from_db()
    assert (sent.status, sent.reason) == (Delivery.Status.BOUNCED, "5.1.1 550 5.1.1 User unknown")
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert dana.blocked_at is not None
    assert set(dana.subscriptions.values_list("status", flat=True)) == {Subscription.Status.INACTIVE}
    assert suppression(dana) == Suppression.Reason.HARD_BOUNCE
    blocked = dana.consent_events.get(kind=ConsentEvent.Kind.BLOCKED)
    assert (blocked.actor, blocked.source, blocked.actor_user) == ("provider", "webhook", None)
    assert blocked.details == {"reason": "hard_bounce", "event": event.pk, "provider": "postmark", "status": "5.1.1"}
    assert {a["name"] for a in blocked.audiences} == {"Weekly news", "Offers"}
    assert counters(brand, today(brand)) == {**ZERO, "sent": 1, "hard_bounces": 1}
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()


def test_a_complaint_blocks_and_suppresses_the_address_at_once(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit
) -> None:
    bounces.count(brand.pk, today(brand), sent=9999)  # a busy day: one complaint stays under every threshold

    event = receive(report(sent, "complained", reject_reason="spam"), on_commit)

    assert event.kind == Kind.COMPLAINED
    sent.refresh_from_db()
    assert sent.status == Delivery.Status.COMPLAINED
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert suppression(dana) == Suppression.Reason.COMPLAINT
    blocked = dana.consent_events.get(kind=ConsentEvent.Kind.BLOCKED)
    assert (blocked.actor, blocked.source) == ("provider", "webhook")
    assert blocked.details == {"reason": "complaint", "event": event.pk, "provider": "postmark", "status": ""}
    assert counters(brand, today(brand)) == {**ZERO, "sent": 10000, "complaints": 1}
    assert not SendingAlert.objects.exists()


def test_a_bounce_read_from_the_bounce_mailbox_is_acted_on_with_the_mailbox_as_source(
    sent: Delivery, dana: Subscriber, on_commit: OnCommit
) -> None:
    [r] = dsn.parse(sample("postfix-5.1.1.eml", sent.pk), provider="mailbox")  # VERP names the delivery

    event = receive(r, on_commit)

    assert (event.kind, event.delivery_id) == (Kind.BOUNCED, sent.pk)
    assert suppression(dana) == Suppression.Reason.HARD_BOUNCE
    blocked = dana.consent_events.get(kind=ConsentEvent.Kind.BLOCKED)
    assert (blocked.actor, blocked.source) == ("provider", "mailbox")
    assert blocked.details["provider"] == "mailbox"


def test_an_arf_abuse_report_is_a_complaint(
    signup_form: SignupForm, news: Audience, brand: Brand, owner: User, on_commit: OnCommit
) -> None:
    jack = confirmed(signup_form, [news], "jack.doe@aol.com")  # the sample's recipient, as AOL writes it: Jack.Doe
    message = delivery_of(send(brand, [news], owner, on_commit), jack)
    bounces.count(brand.pk, today(brand), sent=9999)
    [r] = dsn.parse(sample("arf-abuse.eml", message.pk), provider="mailbox")

    event = receive(r, on_commit)

    assert (event.kind, event.delivery_id) == (Kind.COMPLAINED, message.pk)
    assert suppression(jack) == Suppression.Reason.COMPLAINT
    blocked = jack.consent_events.get(kind=ConsentEvent.Kind.BLOCKED)
    assert (blocked.actor, blocked.source, blocked.details["reason"]) == ("provider", "mailbox", "complaint")


@pytest.mark.parametrize(
    ("link", "fields"),
    [
        ("metadata", {}),
        ("provider id", {"delivery_id": None, "provider_message_id": "pm-883953f4"}),
        ("message id", {"delivery_id": None}),
    ],
)
def test_it_finds_the_delivery_by_metadata_provider_id_or_our_message_id(
    sent: Delivery, dana: Subscriber, link: str, fields: dict[str, Any], on_commit: OnCommit
) -> None:
    # What anymail gave back when the provider accepted the message.
    Delivery.objects.filter(pk=sent.pk).update(provider_id="pm-883953f4")
    if link == "message id":
        fields["message_id"] = sent.message_id.strip("<>")  # providers repeat it without brackets

    event = receive(hard_bounce(sent, **fields), on_commit)

    assert event.delivery_id == sent.pk
    assert suppression(dana) == Suppression.Reason.HARD_BOUNCE


def test_a_soft_bounce_is_counted_and_changes_nothing_else(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit
) -> None:
    event = receive(report(sent, "deferred", smtp_status="4.2.2", description="452 4.2.2 Mailbox full"), on_commit)

    assert event.kind == Kind.SOFT_BOUNCE
    sent.refresh_from_db()
    assert sent.status == Delivery.Status.SENT
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.CONFIRMED
    assert suppression(dana) is None
    assert kinds(dana) == ["requested", "confirmed"]
    assert counters(brand, today(brand))["soft_bounces"] == 1


@pytest.mark.parametrize(
    ("event_type", "status", "description"),
    [
        ("bounced", "5.7.1", "550 5.7.1 Client host [192.0.2.10] blocked using zen.spamhaus.org"),
        ("bounced", "5.7.26", "550 5.7.26 Unauthenticated email is not accepted due to the domain's DMARC policy"),
        ("rejected", "", ""),
    ],
)
def test_a_policy_refusal_fails_the_message_but_never_suppresses_the_recipient(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit, event_type: str, status: str, description: str
) -> None:
    reason = "blocked" if event_type == "rejected" else "bounced"

    event = receive(
        report(sent, event_type, reject_reason=reason, smtp_status=status, description=description), on_commit
    )

    assert event.kind == Kind.POLICY
    sent.refresh_from_db()
    assert sent.status == Delivery.Status.FAILED
    assert sent.reason == f"{status} {description}".strip()
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.CONFIRMED
    assert suppression(dana) is None
    assert kinds(dana) == ["requested", "confirmed"]
    assert counters(brand, today(brand))["policy_failures"] == 1


def test_a_deferral_for_a_policy_reason_counts_as_a_sending_problem_but_does_not_fail_the_message(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit
) -> None:
    # Gmail defers a sender it distrusts (421 4.7.28) and often delivers on a later try.
    event = receive(
        report(sent, "deferred", smtp_status="4.7.28", description="421-4.7.28 unusual rate of unsolicited mail"),
        on_commit,
    )

    assert event.kind == Kind.POLICY
    sent.refresh_from_db()
    assert (sent.status, sent.reason) == (Delivery.Status.SENT, "")
    assert suppression(dana) is None
    assert counters(brand, today(brand))["policy_failures"] == 1


def test_a_delivery_is_counted(sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit) -> None:
    event = receive(report(sent, "delivered", smtp_status="2.0.0"), on_commit)

    assert event.kind == Kind.DELIVERED
    assert counters(brand, today(brand)) == {**ZERO, "sent": 1, "delivered": 1}
    sent.refresh_from_db()
    assert sent.status == Delivery.Status.SENT
    assert kinds(dana) == ["requested", "confirmed"]


@pytest.mark.parametrize("event_type", ["opened", "clicked"])
def test_opens_and_clicks_move_last_engaged_forward_only(
    sent: Delivery, dana: Subscriber, event_type: str, on_commit: OnCommit
) -> None:
    receive(report(sent, event_type, occurred_at=T0), on_commit)
    dana.refresh_from_db()
    assert dana.last_engaged_at == T0

    receive(report(sent, event_type, occurred_at=T0 - timedelta(hours=1)), on_commit)  # reported late
    dana.refresh_from_db()
    assert dana.last_engaged_at == T0
    assert kinds(dana) == ["requested", "confirmed"]


def test_an_unsubscribe_through_the_providers_link_leaves_everything(
    sent: Delivery, dana: Subscriber, on_commit: OnCommit
) -> None:
    receive(report(sent, "unsubscribed"), on_commit)

    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.UNSUBSCRIBED
    assert set(dana.subscriptions.values_list("status", flat=True)) == {Subscription.Status.INACTIVE}
    event = dana.consent_events.get(kind=ConsentEvent.Kind.UNSUBSCRIBED)
    assert (event.actor, event.source, event.details) == ("provider", "webhook", {"scope": "all"})
    assert suppression(dana) is None  # unsubscribed, not blocked: a new opt-in needs no lifting


@pytest.mark.parametrize("event_type", ["queued", "sent", "failed", "unknown"])
def test_other_events_are_recorded_and_change_nothing(
    sent: Delivery, dana: Subscriber, event_type: str, on_commit: OnCommit
) -> None:
    before = {k: v for k, v in db_snapshot().items() if k != "campaigns.DeliveryEvent"}

    event = receive(report(sent, event_type), on_commit)

    assert (event.kind, event.delivery_id) == (Kind.OTHER, sent.pk)
    assert {k: v for k, v in db_snapshot().items() if k != "campaigns.DeliveryEvent"} == before


def test_counters_go_on_the_day_the_message_was_sent_in_the_brands_time_zone(
    sent: Delivery, brand: Brand, on_commit: OnCommit
) -> None:
    Brand.objects.filter(pk=brand.pk).update(time_zone="Pacific/Auckland")
    # 20:00 UTC on 10 March is 09:00 on 11 March in Auckland (UTC+13); the bounce comes two days later.
    Delivery.objects.filter(pk=sent.pk).update(sent_at=datetime(2025, 3, 10, 20, 0, tzinfo=UTC))

    receive(hard_bounce(sent, occurred_at=datetime(2025, 3, 12, 8, 0, tzinfo=UTC)), on_commit)

    assert list(SendingDay.objects.filter(hard_bounces__gt=0).values_list("day", "hard_bounces")) == [
        (date(2025, 3, 11), 1)
    ]


# --- Replays -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [hard_bounce, lambda d: report(d, "complained"), lambda d: report(d, "deferred")])
def test_a_replayed_event_changes_nothing(
    sent: Delivery, make: Callable[[Delivery], Report], on_commit: OnCommit
) -> None:
    first = make(sent)
    receive(first, on_commit)
    before = db_snapshot()

    with on_commit() as queued:
        assert bounces.record(first) is None

    assert queued == []
    assert db_snapshot() == before


def test_processing_an_event_twice_changes_nothing_the_second_time(sent: Delivery, on_commit: OnCommit) -> None:
    event = receive(hard_bounce(sent), on_commit)
    before = db_snapshot()

    assert bounces.process(event.pk) == "already processed"
    tasks.process_delivery_event.delay(event.pk)

    assert db_snapshot() == before


def test_the_same_complaint_reported_twice_counts_once(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit
) -> None:
    # The feedback loop's ARF report and the provider's webhook both tell of one complaint (two event ids).
    bounces.count(brand.pk, today(brand), sent=9999)
    receive(report(sent, "complained", provider="postmark"), on_commit)
    [arf] = dsn.parse(
        sample("arf-headers-only.eml", sent.pk).replace(b"kate@yahoo.com", b"dana@example.com"), provider="mailbox"
    )

    event = receive(arf, on_commit)

    assert (event.kind, event.delivery_id) == (Kind.COMPLAINED, sent.pk)
    assert counters(brand, today(brand))["complaints"] == 1
    assert dana.consent_events.filter(kind=ConsentEvent.Kind.BLOCKED).count() == 1


def test_the_same_hard_bounce_reported_twice_counts_once(sent: Delivery, brand: Brand, on_commit: OnCommit) -> None:
    receive(hard_bounce(sent, provider="amazon_ses"), on_commit)
    receive(hard_bounce(sent, provider="amazon_ses"), on_commit)  # another notification id, the same bounce

    assert counters(brand, today(brand))["hard_bounces"] == 1


# --- Soft bounces: a run of them suppresses -----------------------------------------------------------


def soft(d: Delivery, at: datetime) -> Report:
    return report(d, "deferred", smtp_status="4.2.2", description="452 4.2.2 Mailbox full", occurred_at=at)


def test_three_soft_bounced_messages_in_a_row_spanning_14_days_suppress(
    dana: Subscriber, news: Audience, owner: User, on_commit: OnCommit
) -> None:
    first, second, third = messages_to(dana, 3, owner, on_commit, news)
    receive(soft(first, T0), on_commit)
    receive(soft(second, T0 + timedelta(days=7)), on_commit)
    dana.refresh_from_db()
    assert (dana.status, suppression(dana)) == (Subscriber.Status.CONFIRMED, None)

    event = receive(soft(third, T0 + timedelta(days=14)), on_commit)

    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert suppression(dana) == Suppression.Reason.SOFT_BOUNCE
    blocked = dana.consent_events.get(kind=ConsentEvent.Kind.BLOCKED)
    assert (blocked.actor, blocked.source) == ("provider", "webhook")
    assert blocked.details == {
        "reason": "soft_bounce",
        "event": event.pk,
        "provider": "postmark",
        "status": "4.2.2",
        "soft_bounces": 3,
    }


def test_three_soft_bounces_within_two_days_do_not_suppress(
    dana: Subscriber, news: Audience, owner: User, on_commit: OnCommit
) -> None:
    deliveries = messages_to(dana, 3, owner, on_commit, news)

    for n, d in enumerate(deliveries):
        receive(soft(d, T0 + timedelta(days=n)), on_commit)

    dana.refresh_from_db()
    assert (dana.status, suppression(dana)) == (Subscriber.Status.CONFIRMED, None)


def test_a_delivery_in_between_resets_the_run(
    dana: Subscriber, news: Audience, owner: User, on_commit: OnCommit
) -> None:
    d1, d2, d3, d4, d5 = messages_to(dana, 5, owner, on_commit, news)
    receive(soft(d1, T0), on_commit)
    receive(report(d2, "delivered", occurred_at=T0 + timedelta(days=1)), on_commit)
    receive(soft(d3, T0 + timedelta(days=7)), on_commit)
    receive(soft(d4, T0 + timedelta(days=14)), on_commit)
    assert suppression(dana) is None  # three soft bounces over 14 days, but not in a row

    receive(soft(d5, T0 + timedelta(days=21)), on_commit)

    assert suppression(dana) == Suppression.Reason.SOFT_BOUNCE  # now three in a row since the delivery


def test_retries_of_one_message_count_as_one_soft_bounce(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit
) -> None:
    for days in (0, 7, 14, 20):  # the provider reports each retry of the one deferred message
        receive(soft(sent, T0 + timedelta(days=days)), on_commit)

    dana.refresh_from_db()
    assert (dana.status, suppression(dana)) == (Subscriber.Status.CONFIRMED, None)
    assert counters(brand, today(brand))["soft_bounces"] == 1


# --- Reports we cannot act on ------------------------------------------------------------------------


def test_a_report_about_another_recipient_is_not_acted_on(
    sent: Delivery, dana: Subscriber, brand: Brand, on_commit: OnCommit
) -> None:
    # The delivery's id, but the address it was forwarded to bounced: that says nothing about Dana.
    before = {k: v for k, v in db_snapshot().items() if k != "campaigns.DeliveryEvent"}

    event = receive(hard_bounce(sent, recipient="dana.forwarded@elsewhere.example"), on_commit)

    assert event.processed_at is not None
    assert (event.kind, event.delivery_id, event.subscriber_id, event.brand_id) == (Kind.BOUNCED, None, None, None)
    assert {k: v for k, v in db_snapshot().items() if k != "campaigns.DeliveryEvent"} == before


@pytest.mark.parametrize(
    "fields",
    [
        {"delivery_id": None, "message_id": "<nobody@elsewhere.example>", "recipient": "stranger@example.org"},
        {"delivery_id": 987654321},
        {"delivery_id": None, "recipient": ""},
    ],
    ids=["foreign-message", "unknown-delivery", "nothing-to-go-by"],
)
def test_a_report_naming_no_delivery_of_ours_is_processed_without_action(
    sent: Delivery, fields: dict[str, Any], on_commit: OnCommit
) -> None:
    before = {k: v for k, v in db_snapshot().items() if k != "campaigns.DeliveryEvent"}

    event = receive(hard_bounce(sent, **fields), on_commit)

    assert event.processed_at is not None
    assert (event.kind, event.delivery_id) == (Kind.BOUNCED, None)
    assert {k: v for k, v in db_snapshot().items() if k != "campaigns.DeliveryEvent"} == before
    assert bounces.process(event.pk) == "already processed"


# --- Complaint-rate thresholds --------------------------------------------------------------------------


@pytest.fixture
def crowd(signup_form: SignupForm, news: Audience, brand: Brand, owner: User, on_commit: OnCommit) -> list[Delivery]:
    """Six people's messages of one campaign, on a day the brand sent 1,000 messages in all."""
    people = [confirmed(signup_form, [news], f"reader{n}@example.com") for n in range(6)]
    campaign = send(brand, [news], owner, on_commit)
    bounces.count(brand.pk, today(brand), sent=1000 - len(people))
    mail.outbox.clear()
    return [delivery_of(campaign, p) for p in people]


@pytest.fixture
def owners(owner: User, editor: User, brand: Brand) -> list[User]:
    """Alice (owner, verified), Olga (owner, address not verified yet), Bob (editor, verified)."""
    olga = User.objects.create_user(username="olga@acme.example", email="olga@acme.example", password="pw-12345678")
    Membership.objects.create(user=olga, brand=brand, role=Membership.Role.OWNER)
    EmailAddress.objects.create(user=owner, email=owner.email, verified=True, primary=True)
    EmailAddress.objects.create(user=owner, email="alice.private@example.net", verified=True, primary=False)
    EmailAddress.objects.create(user=olga, email=olga.email, verified=False, primary=True)
    EmailAddress.objects.create(user=editor, email=editor.email, verified=True, primary=True)
    return [owner, olga]


def complain(d: Delivery, on_commit: OnCommit) -> DeliveryEvent:
    return receive(report(d, "complained", reject_reason="spam"), on_commit)


def test_a_complaint_rate_above_the_warning_level_warns_the_owners_by_email(
    crowd: list[Delivery], owners: list[User], brand: Brand, on_commit: OnCommit
) -> None:
    complain(crowd[0], on_commit)  # 1 in 1,000: 0.1%, not above it
    assert not SendingAlert.objects.exists()
    assert mail.outbox == []

    complain(crowd[1], on_commit)  # 0.2%

    [warning] = SendingAlert.objects.all()
    assert (warning.level, warning.day, warning.sent, warning.complaints) == ("warning", today(brand), 1000, 2)
    assert warning.complaint_rate == pytest.approx(0.002)
    assert warning.acknowledged_at is None
    assert sorted(m.to[0] for m in mail.outbox) == ["alice.private@example.net", "alice@acme.example"]
    message = mail.outbox[0]
    assert message.subject == "Warning for Acme Tea: complaint rate 0.20%"
    assert "2 of the 1,000 messages Acme Tea sent were marked as spam" in message.body
    assert "http://127.0.0.1:8000/b/acme/deliverability/" in message.body
    assert bounces.stopped(brand) is None


def test_at_the_stop_level_running_campaigns_pause_and_nothing_starts_until_an_owner_acknowledges(
    crowd: list[Delivery],
    owners: list[User],
    owner: User,
    brand: Brand,
    other_brand: Brand,
    news: Audience,
    on_commit: OnCommit,
) -> None:
    running = Campaign.objects.create(brand=brand, name="Running", subject="Hi", html_body=HTML, created_by=owner)
    running.audiences.set([news])
    Campaign.objects.filter(pk=running.pk).update(status=Campaign.Status.SENDING)
    theirs = Campaign.objects.create(brand=other_brand, name="Theirs", subject="Hi", html_body=HTML)
    Campaign.objects.filter(pk=theirs.pk).update(status=Campaign.Status.SENDING)
    complain(crowd[0], on_commit)
    complain(crowd[1], on_commit)
    mail.outbox.clear()

    complain(crowd[2], on_commit)  # 0.3%

    stop = SendingAlert.objects.get(level=SendingAlert.Level.STOP)
    assert bounces.stopped(brand) == stop
    assert (stop.day, stop.complaints, stop.sent) == (today(brand), 3, 1000)
    assert Campaign.objects.get(pk=running.pk).status == Campaign.Status.PAUSED
    assert Campaign.objects.get(pk=theirs.pk).status == Campaign.Status.SENDING
    assert bounces.stopped(other_brand) is None
    audit = AuditEvent.objects.get(action="sending.stopped")
    assert audit.details["paused"] == ["Running"]
    assert sorted(m.to[0] for m in mail.outbox) == ["alice.private@example.net", "alice@acme.example"]
    assert mail.outbox[0].subject == "Sending stopped for Acme Tea: complaint rate 0.30%"
    assert "paused every running campaign" in mail.outbox[0].body

    # While stopped: no scheduling, no resuming, and a campaign that falls due does not start.
    draft = Campaign.objects.create(brand=brand, name="Draft", subject="Hi", html_body=HTML, created_by=owner)
    draft.audiences.set([news])
    with pytest.raises(CampaignError, match="Sending is stopped for this brand because of its complaint rate"):
        delivery.schedule(campaign=draft, user=owner)
    with pytest.raises(CampaignError, match="an owner must acknowledge it first"):
        delivery.resume(campaign=running, user=owner)
    due = Campaign.objects.create(brand=brand, name="Due", subject="Hi", html_body=HTML, created_by=owner)
    due.audiences.set([news])
    Campaign.objects.filter(pk=due.pk).update(status=Campaign.Status.SCHEDULED, scheduled_at=timezone.now())
    assert delivery.start(campaign_id=due.pk) is False
    assert Campaign.objects.get(pk=due.pk).status == Campaign.Status.SCHEDULED
    assert not due.deliveries.exists()
    assert Campaign.objects.get(pk=draft.pk).status == Campaign.Status.DRAFT
    assert Campaign.objects.get(pk=running.pk).status == Campaign.Status.PAUSED

    bounces.acknowledge(alert=stop, user=owner)

    assert bounces.stopped(brand) is None
    assert set(SendingAlert.objects.values_list("acknowledged_by", flat=True)) == {owner.pk}
    assert Campaign.objects.get(pk=running.pk).status == Campaign.Status.PAUSED  # the owner resumes it
    assert delivery.resume(campaign=running, user=owner).status == Campaign.Status.SENDING
    assert delivery.start(campaign_id=due.pk) is True
    assert delivery.schedule(campaign=draft, user=owner).status == Campaign.Status.SCHEDULED


def test_one_alert_per_brand_day_and_level(crowd: list[Delivery], owners: list[User], on_commit: OnCommit) -> None:
    for d in crowd[:3]:
        complain(d, on_commit)
    assert sorted(SendingAlert.objects.values_list("level", flat=True)) == ["stop", "warning"]
    emails = len(mail.outbox)

    complain(crowd[3], on_commit)
    complain(crowd[4], on_commit)

    assert sorted(SendingAlert.objects.values_list("level", "complaints")) == [("stop", 3), ("warning", 2)]
    assert len(mail.outbox) == emails


def test_a_jump_past_both_levels_raises_both_alerts_at_once(
    sent: Delivery, owners: list[User], brand: Brand, on_commit: OnCommit
) -> None:
    complain(sent, on_commit)  # 1 complaint of 1 message sent

    assert sorted(SendingAlert.objects.values_list("level", flat=True)) == ["stop", "warning"]
    assert [m.subject.split(":")[0] for m in mail.outbox if m.to == ["alice@acme.example"]] == [
        "Warning for Acme Tea",
        "Sending stopped for Acme Tea",
    ]
    assert bounces.stopped(brand) is not None


# --- Lifting a suppression: only the person's own new double opt-in -----------------------------------


def confirmation_path(message: Any) -> str:
    match = re.search(r"http://127\.0\.0\.1:8000(/c/[^\s\"<>]+)", message.body)
    assert match, message.body
    return match[1]


@pytest.fixture
def later(settings: Any) -> None:
    """The person comes back another day: the earlier confirmation email does not throttle the new one."""
    settings.CONFIRMATION_MIN_INTERVAL_MINUTES = 0


@pytest.mark.parametrize(
    ("make", "reason"),
    [(hard_bounce, Suppression.Reason.HARD_BOUNCE), (lambda d: report(d, "complained"), Suppression.Reason.COMPLAINT)],
    ids=["hard-bounce", "complaint"],
)
def test_the_persons_own_new_double_opt_in_lifts_a_bounce_or_complaint_suppression(
    client: Client,
    signup_form: SignupForm,
    sent: Delivery,
    dana: Subscriber,
    news: Audience,
    later: None,
    on_commit: OnCommit,
    make: Callable[[Delivery], Report],
    reason: str,
) -> None:
    receive(make(sent), on_commit)
    assert suppression(dana) == reason
    mail.outbox.clear()

    # She signs up again through the form: a confirmation email, but no mail until she confirms.
    with on_commit():
        response = client.post(SIGNUP, signup_data(signup_form, email="Dana@Example.com", audiences=[news.pk]))
    assert response.status_code == 303
    [message] = mail.outbox
    assert message.to == ["Pat Doe <dana@example.com>"]
    dana.refresh_from_db()
    assert (dana.status, suppression(dana)) == (Subscriber.Status.BLOCKED, reason)
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    path = confirmation_path(message)
    assert client.get(path).status_code == 200  # a link scanner's GET confirms nothing
    assert suppression(dana) == reason

    response = client.post(path, HTTP_USER_AGENT="Firefox", REMOTE_ADDR="192.0.2.5")

    assert response.status_code == 200
    assert suppression(dana) is None
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.CONFIRMED
    assert dana.blocked_at is None
    assert list(Subscriber.objects.eligible(audience_ids=[news.pk])) == [dana]
    assert kinds(dana) == ["requested", "confirmed", "blocked", "requested", "unblocked", "confirmed"]
    unblocked = dana.consent_events.get(kind=ConsentEvent.Kind.UNBLOCKED)
    assert (unblocked.actor, unblocked.source, unblocked.ip) == ("consumer", "email_link", "192.0.2.5")
    assert unblocked.details["reason"] == reason


def test_an_import_cannot_lift_a_bounce_suppression(
    sent: Delivery, dana: Subscriber, brand: Brand, editor: User, news: Audience, on_commit: OnCommit
) -> None:
    from tests.dashboard.test_imports import HEADER, Basis, import_text

    receive(hard_bounce(sent), on_commit)
    before = db_snapshot()

    job = import_text(HEADER + "dana@example.com,Dana,,,\n", brand, editor, [news], on_commit, basis=Basis.ATTESTATION)

    assert list(job.issues.values_list("reason", flat=True)) == ["suppressed"]
    after = db_snapshot()
    assert {k: after[k] for k in ("audiences.Subscriber", "audiences.Suppression", "audiences.ConsentEvent")} == {
        k: before[k] for k in ("audiences.Subscriber", "audiences.Suppression", "audiences.ConsentEvent")
    }


def test_the_team_cannot_lift_a_bounce_suppression(
    sent: Delivery, dana: Subscriber, signup_form: SignupForm, news: Audience, on_commit: OnCommit
) -> None:
    receive(hard_bounce(sent), on_commit)
    before = db_snapshot()
    mail.outbox.clear()

    with on_commit():
        outcome = consent.request_subscription(form=signup_form, email=dana.email, audiences=[news], evidence=TEAM)
    with pytest.raises(consent.ConsentRefused):  # nor her own preference link: it is no new opt-in
        consent.resubscribe(subscriber=dana, audience_ids=[news.pk], evidence=CONSUMER)

    assert outcome == Outcome.SUPPRESSED
    assert mail.outbox == []
    assert db_snapshot() == before


@pytest.mark.parametrize("who", ["never contact me", "team"])
def test_a_block_after_a_bounce_hardens_the_suppression_for_good(
    client: Client,
    signup_form: SignupForm,
    sent: Delivery,
    dana: Subscriber,
    news: Audience,
    later: None,
    on_commit: OnCommit,
    who: str,
) -> None:
    receive(hard_bounce(sent), on_commit)
    evidence = CONSUMER if who == "never contact me" else TEAM

    consent.block(subscriber=dana, evidence=evidence)

    assert suppression(dana) == Suppression.Reason.BLOCKED
    hardened = dana.consent_events.filter(kind=ConsentEvent.Kind.BLOCKED).latest("pk")
    assert (hardened.actor, hardened.details) == (evidence.actor, {"reason": "blocked"})
    assert kinds(dana) == ["requested", "confirmed", "blocked", "blocked"]
    mail.outbox.clear()
    with on_commit():
        client.post(SIGNUP, signup_data(signup_form, email=dana.email, audiences=[news.pk]))
    assert mail.outbox == []
    assert suppression(dana) == Suppression.Reason.BLOCKED
    assert kinds(dana) == ["requested", "confirmed", "blocked", "blocked"]


def test_the_team_blocking_a_bounced_subscriber_on_the_dashboard_hardens_the_suppression(
    client: Client, owner: User, sent: Delivery, dana: Subscriber, on_commit: OnCommit
) -> None:
    receive(hard_bounce(sent), on_commit)
    client.force_login(owner)

    response = client.post(f"/b/acme/subscribers/{dana.pk}/block/")

    assert response.status_code == 302
    assert suppression(dana) == Suppression.Reason.BLOCKED
    hardened = dana.consent_events.filter(kind=ConsentEvent.Kind.BLOCKED).latest("pk")
    assert (hardened.actor, hardened.actor_user, hardened.source) == ("team", owner, "dashboard")


def test_the_team_adding_a_bounced_address_to_the_suppression_list_hardens_it(
    client: Client,
    signup_form: SignupForm,
    sent: Delivery,
    dana: Subscriber,
    brand: Brand,
    later: None,
    news: Audience,
    on_commit: OnCommit,
) -> None:
    receive(hard_bounce(sent), on_commit)

    suppressions.add(brand=brand, emails=[dana.email], note="asked us by phone", evidence=TEAM)

    assert suppression(dana) == Suppression.Reason.TEAM
    hardened = dana.consent_events.filter(kind=ConsentEvent.Kind.BLOCKED).latest("pk")
    assert (hardened.actor, hardened.details) == ("team", {"reason": "team"})
    mail.outbox.clear()
    with on_commit():
        client.post(SIGNUP, signup_data(signup_form, email=dana.email, audiences=[news.pk]))
    assert mail.outbox == []
    assert suppression(dana) == Suppression.Reason.TEAM


def test_a_bounce_after_a_block_does_not_soften_it(sent: Delivery, dana: Subscriber, on_commit: OnCommit) -> None:
    consent.block(subscriber=dana, evidence=TEAM)

    receive(hard_bounce(sent), on_commit)

    assert suppression(dana) == Suppression.Reason.BLOCKED
    assert kinds(dana) == ["requested", "confirmed", "blocked"]


@pytest.mark.parametrize(
    "bounced_first",
    [
        pytest.param(False, id="erased"),
        pytest.param(True, id="bounced-then-erased"),
    ],
)
def test_an_erased_persons_suppression_is_never_lifted(
    client: Client,
    signup_form: SignupForm,
    sent: Delivery,
    dana: Subscriber,
    news: Audience,
    later: None,
    on_commit: OnCommit,
    bounced_first: bool,
) -> None:
    if bounced_first:
        receive(hard_bounce(sent), on_commit)
    digest = dana.email_hash
    consent.erase(subscriber=dana, evidence=CONSUMER)
    mail.outbox.clear()

    with on_commit():
        client.post(SIGNUP, signup_data(signup_form, email="dana@example.com", audiences=[news.pk]))

    assert mail.outbox == []
    assert not Subscriber.objects.filter(email_hash=digest).exists()
    assert not ConsumerEmail.objects.exists()
    assert Suppression.objects.filter(email_hash=digest).exists()
    assert email_hash("dana@example.com") == digest
