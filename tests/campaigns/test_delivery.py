"""Campaign delivery: planning, the send-time eligibility re-check, batches, headers, reconciler."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

from audiences import consent
from audiences.consent import Evidence
from audiences.models import Audience, Brand, ConsentEvent, SignupForm, Subscriber, Suppression
from campaigns import delivery, tasks
from campaigns.models import Campaign, Delivery

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
HTML = "<style>h1{color:#0b5cad}</style><h1>Hello {{ subscriber.first_name | default('friend') }}</h1><p>News.</p>"


def confirmed(form: SignupForm, audiences: list[Audience], email: str, **attrs: Any) -> Subscriber:
    consent.request_subscription(form=form, email=email, audiences=audiences, evidence=EVIDENCE, name="Pat Doe")
    subscriber = Subscriber.objects.get(email=email)
    consent.confirm(subscriber=subscriber, audience_ids=[a.pk for a in audiences], evidence=EVIDENCE)
    if attrs:
        Subscriber.objects.filter(pk=subscriber.pk).update(attributes=attrs)
    subscriber.refresh_from_db()
    return subscriber


@pytest.fixture
def people(signup_form: SignupForm, news: Audience, offers: Audience) -> list[Subscriber]:
    return [
        confirmed(signup_form, [news], "a@example.com", city="Berlin"),
        confirmed(signup_form, [news, offers], "b@example.com", city="Paris"),
        confirmed(signup_form, [offers], "c@example.com"),
    ]


@pytest.fixture
def campaign(brand: Brand, news: Audience, owner: Any) -> Campaign:
    c = Campaign.objects.create(
        brand=brand, name="Weekly 1", subject="Hi {{ subscriber.first_name }}", html_body=HTML, created_by=owner
    )
    c.audiences.set([news])
    return c


def send_now(campaign: Campaign, owner: Any, django_capture_on_commit_callbacks: Any) -> None:
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        delivery.schedule(campaign=campaign, user=owner)


def test_planning_inserts_one_delivery_per_eligible_subscriber_and_is_repeatable(
    campaign: Campaign, people: list[Subscriber], django_assert_max_num_queries: Any
) -> None:
    with django_assert_max_num_queries(8):
        assert delivery.plan(campaign) == 2
    assert delivery.plan(campaign) == 0
    assert set(Delivery.objects.values_list("subscriber__email", flat=True)) == {"a@example.com", "b@example.com"}


def test_planning_queries_do_not_grow_with_subscribers(
    campaign: Campaign, signup_form: SignupForm, news: Audience
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    for n in range(3):
        confirmed(signup_form, [news], f"p{n}@example.com")
    with CaptureQueriesContext(connection) as small:
        delivery.plan(campaign)
    Delivery.objects.all().delete()
    for n in range(3, 30):
        confirmed(signup_form, [news], f"p{n}@example.com")
    with CaptureQueriesContext(connection) as large:
        assert delivery.plan(campaign) == 30
    assert len(large.captured_queries) == len(small.captured_queries)


def test_a_scheduled_campaign_is_sent_to_exactly_the_eligible(
    campaign: Campaign, people: list[Subscriber], owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    send_now(campaign, owner, django_capture_on_commit_callbacks)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert sorted(m.to[0] for m in mail.outbox) == ["Pat Doe <a@example.com>", "Pat Doe <b@example.com>"]
    message = mail.outbox[0]
    assert isinstance(message, EmailMultiAlternatives)
    assert message.subject == "Hi Pat"
    assert message.extra_headers["List-Unsubscribe"].startswith("<http://127.0.0.1:8000/u/")
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "List-Id" in message.extra_headers
    html = str(message.alternatives[0][0])
    assert 'style="color: #0b5cad;"' in html  # CSS inlined
    assert "Acme Tea, 2 Leaf Lane, Bristol BS1 1AA" in html
    assert message.extra_headers["List-Unsubscribe"][1:-1] in html
    assert "Unsubscribe:" in message.body  # a text part always exists
    assert set(Delivery.objects.values_list("status", flat=True)) == {"sent"}
    assert all(d.message_id.endswith("@acme.example>") for d in Delivery.objects.all())


@pytest.mark.parametrize("change", ["unsubscribe", "block", "pause", "erase", "suppress"])
def test_a_person_who_withdraws_after_planning_is_not_sent_to(
    campaign: Campaign, people: list[Subscriber], news: Audience, owner: Any, change: str
) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
    delivery.plan(campaign)
    a = people[0]
    if change == "unsubscribe":
        consent.unsubscribe(subscriber=a, audience_ids=[news.pk], evidence=EVIDENCE)
    elif change == "block":
        consent.block(subscriber=a, evidence=EVIDENCE)
    elif change == "pause":
        consent.pause(subscriber=a, days=30, evidence=EVIDENCE)
    elif change == "erase":
        consent.erase(subscriber=a, evidence=EVIDENCE)
    else:
        Suppression.objects.create(brand=a.brand, email_hash=a.email_hash, reason="complaint")
    mail.outbox.clear()
    result = delivery.send_batch(campaign_id=campaign.pk)
    assert [m.to[0] for m in mail.outbox] == ["Pat Doe <b@example.com>"]
    if change != "erase":
        skipped = Delivery.objects.get(subscriber=a)
        assert skipped.status == Delivery.Status.SKIPPED
        expected = {"unsubscribe": "unsubscribed", "block": "blocked", "pause": "paused", "suppress": "suppressed"}
        assert skipped.reason == expected[change]
        assert result.skipped == 1


def test_running_the_same_batch_task_twice_sends_one_message(campaign: Campaign, people: list[Subscriber]) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
    delivery.plan(campaign)
    mail.outbox.clear()
    tasks.send_campaign_batch.delay(campaign.pk)
    tasks.send_campaign_batch.delay(campaign.pk)
    assert len(mail.outbox) == 2
    assert Delivery.objects.filter(status="sent").count() == 2


def test_the_brand_frequency_limit_holds(
    campaign: Campaign, people: list[Subscriber], brand: Brand, news: Audience, owner: Any
) -> None:
    Brand.objects.filter(pk=brand.pk).update(frequency_limit=1)
    earlier = Campaign.objects.create(brand=brand, name="Earlier", subject="x", html_body="x")
    Delivery.objects.create(campaign=earlier, subscriber=people[0], status="sent", sent_at=timezone.now())
    assert delivery.plan(campaign) == 1
    assert Delivery.objects.filter(campaign=campaign).get().subscriber == people[1]


def test_a_personal_monthly_frequency_holds(campaign: Campaign, people: list[Subscriber], brand: Brand) -> None:
    Subscriber.objects.filter(pk=people[1].pk).update(frequency=Subscriber.Frequency.MONTHLY)
    earlier = Campaign.objects.create(brand=brand, name="Earlier", subject="x", html_body="x")
    Delivery.objects.create(
        campaign=earlier, subscriber=people[1], status="sent", sent_at=timezone.now() - timedelta(days=20)
    )
    assert delivery.plan(campaign) == 1


def test_segment_rules_narrow_the_audience(campaign: Campaign, people: list[Subscriber]) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(
        segment=[{"field": "attributes.city", "op": "equals", "value": "berlin"}]
    )
    campaign.refresh_from_db()
    assert list(delivery.recipients(campaign).values_list("email", flat=True)) == ["a@example.com"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"postal_address": ""}, "postal address"),
        ({"subject": "Hi\r\nBcc: x"}, "line break"),
        ({"html_body": "{{ ''.__class__ }}"}, "not allowed"),
        ({"html_body": "<p>{% if %}</p>"}, "line 1"),
    ],
)
def test_a_campaign_that_is_not_ready_cannot_be_scheduled(
    campaign: Campaign, owner: Any, brand: Brand, change: dict[str, str], message: str
) -> None:
    if "postal_address" in change:
        Brand.objects.filter(pk=brand.pk).update(**change)
    else:
        Campaign.objects.filter(pk=campaign.pk).update(**change)
    campaign = Campaign.objects.get(pk=campaign.pk)
    with pytest.raises(delivery.CampaignError, match=message):
        delivery.schedule(campaign=campaign, user=owner)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_pause_resume_and_cancel(campaign: Campaign, people: list[Subscriber], owner: Any) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
    delivery.plan(campaign)
    delivery.pause(campaign=campaign, user=owner)
    mail.outbox.clear()
    assert delivery.send_batch(campaign_id=campaign.pk).claimed == 0
    assert mail.outbox == []
    delivery.resume(campaign=campaign, user=owner)
    delivery.cancel(campaign=campaign, user=owner)
    assert set(Delivery.objects.values_list("status", "reason")) == {("skipped", "cancelled")}


def test_the_reconciler_requeues_expired_leases_and_finishes(campaign: Campaign, people: list[Subscriber]) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING, heartbeat_at=timezone.now())
    delivery.plan(campaign)
    claimed = delivery.claim_batch(campaign.pk, 10)
    assert len(claimed) == 2
    Delivery.objects.update(lease_until=timezone.now() - timedelta(seconds=1))
    stats = delivery.reconcile()
    assert stats["released"] == 2
    assert set(Delivery.objects.values_list("status", flat=True)) == {"queued"}
    Delivery.objects.update(status="sent", sent_at=timezone.now())
    assert delivery.reconcile()["finished"] == 1
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT


def test_batches_claim_from_the_front_and_then_what_went_back_behind_it(
    campaign: Campaign, people: list[Subscriber], signup_form: SignupForm, news: Audience
) -> None:
    more = [confirmed(signup_form, [news], f"p{i}@example.com") for i in range(4)]
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING, heartbeat_at=timezone.now())
    delivery.plan(campaign)
    ids = list(Delivery.objects.filter(campaign=campaign).order_by("pk").values_list("pk", flat=True))
    assert len(ids) == 2 + len(more)  # a and b read the news; c does not

    first = delivery.send_batch(campaign_id=campaign.pk, size=2)
    campaign.refresh_from_db()
    assert (first.sent, campaign.claim_from) == (2, ids[0])
    delivery.send_batch(campaign_id=campaign.pk, size=2)
    campaign.refresh_from_db()
    assert campaign.claim_from == ids[2]
    # A delivery behind the front goes back to the queue (a released lease, a due retry) …
    Delivery.objects.filter(pk=ids[1]).update(status=Delivery.Status.QUEUED, sent_at=None)

    # … the front comes first; once it runs dry, the claim looks behind it.
    assert delivery.claim_batch(campaign.pk, 10, from_id=campaign.claim_from) == ids[4:]
    Delivery.objects.filter(pk__in=ids[4:]).update(status=Delivery.Status.QUEUED)
    last = delivery.send_batch(campaign_id=campaign.pk, size=5)
    assert last.sent == 3
    assert set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"sent"}


def test_progress_counts(
    campaign: Campaign, people: list[Subscriber], owner: Any, django_capture_on_commit_callbacks: Any
) -> None:
    send_now(campaign, owner, django_capture_on_commit_callbacks)
    figures = delivery.progress(Campaign.objects.get(pk=campaign.pk))
    assert (figures["total"], figures["sent"], figures["remaining"], figures["percent"]) == (2, 2, 0, 100)


def test_the_reconciler_never_finishes_a_campaign_that_is_still_planning(
    campaign: Campaign, people: list[Subscriber]
) -> None:
    # The start committed "sending" and is still planning (planned_at not yet set).
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING, heartbeat_at=timezone.now())
    assert delivery.reconcile()["finished"] == 0
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING


def test_the_reconciler_plans_a_start_that_died_while_planning(campaign: Campaign, people: list[Subscriber]) -> None:
    long_ago = timezone.now() - timedelta(hours=1)
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING, heartbeat_at=long_ago)
    mail.outbox.clear()
    assert delivery.reconcile()["restarted"] == 1  # plans, then the (eager) batches send
    assert len(mail.outbox) == 2
    campaign.refresh_from_db()
    assert campaign.planned_at is not None
