"""A complaint arriving while a campaign is running, on the real parts.

The provider's webhook is posted (basic auth) to the live server, which records
the event; a real worker process takes the processing from Redis and suppresses
the person; the running campaign's next batch re-checks eligibility and skips
them, and the SMTP server never sees that message.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections import Counter
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from audiences.models import Audience, ConsentEvent, SignupForm, Subscriber, Suppression
from campaigns import bounces, delivery
from campaigns.models import Campaign, Delivery, DeliveryEvent
from tests.campaigns.conftest import Workers
from tests.campaigns.test_delivery_integration import confirmed, is_sent, new_campaign, seed_confirmed, wait_until
from tests.mailserver import MailServer

pytestmark = pytest.mark.integration

SECRET = "assent:integration-webhook-secret"
READERS = 300


def post_webhook(url: str, payload: dict[str, Any]) -> int:
    """POST as the provider does: JSON, with the basic-auth credentials in the webhook URL."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(SECRET.encode()).decode(),
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


def postmark_complaint(delivery_id: int, email: str) -> dict[str, Any]:
    """Postmark's SpamComplaint webhook, echoing the metadata the message was sent with."""
    return {
        "RecordType": "SpamComplaint",
        "MessageStream": "broadcast",
        "ID": 4323372036854775808,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "Name": "Spam complaint",
        "Tag": "campaign",
        "MessageID": "1b2c3d4e-0000-4000-8000-00000000c0de",
        "Metadata": {"assent_delivery": str(delivery_id)},
        "ServerID": 23,
        "Description": "The subscriber explicitly marked this message as spam.",
        "Details": "Test spam complaint details",
        "Email": email,
        "From": "news@acme.example",
        "BouncedAt": "2025-11-25T14:50:05Z",
        "Inactive": True,
        "CanActivate": False,
        "Subject": "Autumn teas",
    }


def test_a_complaint_processed_mid_campaign_keeps_the_person_out_of_the_next_batch(
    workers: Workers,
    live_server: Any,
    settings: Any,
    signup_form: SignupForm,
    news: Audience,
    offers: Audience,
    owner: User,
    mail_server: MailServer,
) -> None:
    settings.ANYMAIL = {"WEBHOOK_SECRET": [SECRET]}
    brand = signup_form.brand
    readers = seed_confirmed(form=signup_form, audience=news, count=READERS)
    # Subscribed last, so the running campaign reaches her in one of its last batches.
    xena = confirmed(signup_form, [news, offers], "xena@example.com")
    # A busy day: one complaint must not cross the stop level, which would pause the campaign for good.
    bounces.count(brand.pk, timezone.localtime(timezone.now(), bounces.zone(brand)).date(), sent=100_000)
    workers.start()

    # An earlier campaign reached Xena.
    earlier = Campaign.objects.create(
        brand=brand, name="Autumn teas", subject="Autumn teas", html_body="<p>Autumn teas are in.</p>", created_by=owner
    )
    earlier.audiences.set([offers])
    delivery.schedule(campaign=earlier, user=owner)
    wait_until(is_sent(earlier), what="the earlier campaign sent", workers=workers)
    complained_of = Delivery.objects.get(campaign=earlier, subscriber=xena)
    assert mail_server.received() == Counter({xena.email: 1})

    # The running campaign: paused after its first batch, so a report lands between two batches.
    mail_server.delay = 0.002
    running = new_campaign(brand, [news], owner)
    delivery.schedule(campaign=running, user=owner)
    wait_until(
        lambda: Delivery.objects.filter(campaign=running, status=Delivery.Status.SENT).exists(),
        what="a first batch sent",
        workers=workers,
    )
    delivery.pause(campaign=running, user=owner)
    wait_until(
        lambda: not Delivery.objects.filter(campaign=running, status=Delivery.Status.SENDING).exists(),
        what="the batch in flight finished",
        workers=workers,
    )
    hers = Delivery.objects.get(campaign=running, subscriber=xena)
    assert hers.status == Delivery.Status.QUEUED, "her message went out before the pause: the batches were too quick"
    sent_before = Delivery.objects.filter(campaign=running, status=Delivery.Status.SENT).count()
    assert 0 < sent_before < READERS

    # She marks the earlier message as spam; the provider tells us.
    status = post_webhook(
        f"{live_server.url}/webhooks/anymail/postmark/tracking/", postmark_complaint(complained_of.pk, xena.email)
    )
    assert status == 200
    event = wait_until(
        lambda: DeliveryEvent.objects.filter(processed_at__isnull=False).first(),
        what="the complaint processed by the worker",
        workers=workers,
    )
    assert event is not None
    assert "campaigns.tasks.process_delivery_event" in "".join(w.log() for w in workers.started)
    assert (event.kind, event.delivery_id) == (DeliveryEvent.Kind.COMPLAINED, complained_of.pk)
    assert Suppression.objects.get(brand=brand, email_hash=xena.email_hash).reason == Suppression.Reason.COMPLAINT

    delivery.resume(campaign=running, user=owner)
    wait_until(is_sent(running), what="the running campaign sent", workers=workers, reconcile=Counter())

    hers.refresh_from_db()
    assert (hers.status, hers.reason) == (Delivery.Status.SKIPPED, "blocked")
    received = mail_server.received()
    assert received[xena.email] == 1  # the earlier message only
    assert [m["Subject"] for m in mail_server.messages if xena.email in str(m["To"])] == ["Autumn teas"]
    assert received == Counter({**dict.fromkeys(readers, 1), xena.email: 1})
    statuses = Counter(Delivery.objects.filter(campaign=running).values_list("status", flat=True))
    assert statuses == Counter({Delivery.Status.SENT: READERS, Delivery.Status.SKIPPED: 1})
    complained_of.refresh_from_db()
    assert complained_of.status == Delivery.Status.COMPLAINED
    xena.refresh_from_db()
    assert xena.status == Subscriber.Status.BLOCKED
    blocked = xena.consent_events.get(kind=ConsentEvent.Kind.BLOCKED)
    assert (blocked.actor, blocked.source, blocked.details["reason"]) == ("provider", "webhook", "complaint")
