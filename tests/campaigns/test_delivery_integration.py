"""Campaign delivery on the real parts: PostgreSQL, Redis, worker processes and an aiosmtpd server.

Each test starts its own ``celery worker`` processes (``workers`` in conftest.py)
with short timings (5 s leases, 1 s retry backoff, batches of 50), and calls
``delivery.reconcile()`` from the test process once a second where celery beat
would, so the recovery paths run deterministically. Every wait polls the
database or the SMTP server with a timeout; nothing sleeps for a fixed time.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from audiences import consent
from audiences.consent import Evidence
from audiences.models import (
    Audience,
    Brand,
    ConsentEvent,
    SignupForm,
    Subscriber,
    Subscription,
    email_hash,
)
from campaigns import delivery, tasks, verp
from campaigns.models import Campaign, Delivery
from config.celery import app as celery_app
from tests.campaigns.conftest import QUEUE, TIMINGS, Workers
from tests.mailserver import DROP, MailServer

pytestmark = pytest.mark.integration

T = TypeVar("T")
EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
HTML = "<style>h1{color:#0b5cad}</style><h1>Hello {{ subscriber.first_name | default('friend') }}</h1><p>News.</p>"
BATCH = TIMINGS["DELIVERY_BATCH_SIZE"]


# --- Setting up -------------------------------------------------------------------------------


@contextmanager
def eager() -> Iterator[None]:
    """Run tasks in this process for a while: the confirmation emails consent operations queue in setup."""
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = False


def confirmed(form: SignupForm, audiences: list[Audience], email: str) -> Subscriber:
    """A subscriber who signed up and confirmed, through the real operations."""
    with eager():
        consent.request_subscription(form=form, email=email, audiences=audiences, evidence=EVIDENCE, name="Pat Doe")
        subscriber = Subscriber.objects.get(email=email)
        consent.confirm(subscriber=subscriber, audience_ids=[a.pk for a in audiences], evidence=EVIDENCE)
    subscriber.refresh_from_db()
    return subscriber


def seed_confirmed(*, form: SignupForm, audience: Audience, count: int) -> list[str]:
    """TEST SEEDING, not an operation: ``count`` subscribers in the end state that
    ``consent.request_subscription`` then ``consent.confirm`` leave (confirmed, an active
    subscription, the requested and confirmed events), written set-based because
    thousands of single operations would take minutes. Returns the addresses."""
    now = timezone.now()
    brand = form.brand
    wording = form.current_wording()
    addresses = [f"reader{n:05d}@example.com" for n in range(count)]
    subscribers = Subscriber.objects.bulk_create(
        [
            Subscriber(
                brand=brand,
                email=address,
                email_hash=email_hash(address),
                name=f"Reader {n}",
                language=brand.default_language,
                status=Subscriber.Status.CONFIRMED,
                source=ConsentEvent.Source.FORM,
                created_at=now,
                confirmed_at=now,
            )
            for n, address in enumerate(addresses)
        ],
        batch_size=1000,
    )
    Subscription.objects.bulk_create(
        [
            Subscription(
                subscriber=s,
                audience=audience,
                status=Subscription.Status.ACTIVE,
                source=ConsentEvent.Source.FORM,
                requested_at=now,
                confirmed_at=now,
            )
            for s in subscribers
        ],
        batch_size=1000,
    )
    named = [{"id": audience.pk, "name": audience.name}]
    ConsentEvent.objects.bulk_create(
        [
            ConsentEvent(
                brand=brand,
                subscriber=s,
                kind=kind,
                actor=ConsentEvent.Actor.CONSUMER,
                source=ConsentEvent.Source.FORM,
                audiences=named,
                **(
                    {
                        "signup_form": form,
                        "wording": wording,
                        "wording_text": wording.text,
                        "details": {"wording_version": wording.version},
                    }
                    if kind == ConsentEvent.Kind.REQUESTED
                    else {}
                ),
            )
            for s in subscribers
            for kind in (ConsentEvent.Kind.REQUESTED, ConsentEvent.Kind.CONFIRMED)
        ],
        batch_size=2000,
    )
    return addresses


def new_campaign(brand: Brand, audiences: list[Audience], owner: User) -> Campaign:
    campaign = Campaign.objects.create(
        brand=brand,
        name="Spring news",
        subject="Hello {{ subscriber.first_name | default('friend') }}",
        html_body=HTML,
        created_by=owner,
    )
    campaign.audiences.set(audiences)
    return campaign


# --- Waiting --------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], T],
    *,
    what: str,
    workers: Workers,
    timeout: float = 30,
    reconcile: Counter[str] | None = None,
) -> T:
    """Poll ``condition`` until it is truthy. With ``reconcile`` (a Counter of its stats), run
    the reconciler once a second meanwhile, as celery beat would."""
    deadline = time.monotonic() + timeout
    next_reconcile = time.monotonic()
    while True:
        value = condition()
        if value:
            return value
        now = time.monotonic()
        if now > deadline:
            pytest.fail(f"not {what} within {timeout}s; deliveries: {_statuses()}\n{workers.logs()}")
        if reconcile is not None and now >= next_reconcile:
            reconcile.update(delivery.reconcile())
            next_reconcile = now + TIMINGS["DELIVERY_RECONCILE_SECONDS"]
        time.sleep(0.05)


def _statuses() -> dict[str, int]:
    return Counter(Delivery.objects.values_list("status", flat=True))


def is_sent(campaign: Campaign) -> Callable[[], bool]:
    return lambda: Campaign.objects.filter(pk=campaign.pk, status=Campaign.Status.SENT).exists()


def sent_count(campaign: Campaign) -> int:
    return Delivery.objects.filter(campaign=campaign, status=Delivery.Status.SENT).count()


# --- Eligibility at send time ------------------------------------------------------------------


def test_it_does_not_send_to_people_who_withdraw_after_planning(
    workers: Workers, signup_form: SignupForm, news: Audience, owner: User, mail_server: MailServer
) -> None:
    stays = confirmed(signup_form, [news], "stays@example.com")
    leaves = confirmed(signup_form, [news], "leaves@example.com")
    blocked = confirmed(signup_form, [news], "blocked@example.com")
    pauses = confirmed(signup_form, [news], "pauses@example.com")
    erased = confirmed(signup_form, [news], "erased@example.com")
    campaign = new_campaign(signup_form.brand, [news], owner)

    # No worker runs yet: the reconciler (here, in place of beat) starts the due campaign,
    # which plans the deliveries and enqueues the batches into the broker, where they wait.
    delivery.schedule(campaign=campaign, user=owner)
    assert delivery.reconcile()["started"] == 1
    assert Delivery.objects.filter(campaign=campaign, status=Delivery.Status.QUEUED).count() == 5

    consent.unsubscribe(subscriber=leaves, audience_ids=[news.pk], evidence=EVIDENCE)
    consent.block(subscriber=blocked, evidence=EVIDENCE)
    consent.pause(subscriber=pauses, days=30, evidence=EVIDENCE)
    consent.erase(subscriber=erased, evidence=EVIDENCE)
    workers.start()

    wait_until(is_sent(campaign), what="sent", workers=workers, reconcile=Counter())
    assert mail_server.received() == Counter({"stays@example.com": 1})
    outcome = {
        d.subscriber.email: (d.status, d.reason)
        for d in Delivery.objects.filter(campaign=campaign).select_related("subscriber")
    }
    assert outcome == {
        stays.email: ("sent", ""),
        leaves.email: ("skipped", "unsubscribed"),
        blocked.email: ("skipped", "blocked"),
        pauses.email: ("skipped", "paused"),
    }  # the erased person's delivery went with them
    assert not Subscriber.objects.filter(email=erased.email).exists()


def test_running_the_same_batch_task_twice_sends_one_message(
    workers: Workers, signup_form: SignupForm, news: Audience, owner: User, mail_server: MailServer
) -> None:
    people = [confirmed(signup_form, [news], f"p{n}@example.com") for n in range(6)]
    campaign = new_campaign(signup_form.brand, [news], owner)
    delivery.schedule(campaign=campaign, user=owner)
    assert delivery.reconcile()["started"] == 1
    workers.purge()  # drop the chains the start enqueued: this test enqueues the batch itself

    # The same task message twice (as a broker redelivery would), for two workers at once.
    task_id = str(uuid.uuid4())
    for _ in range(2):
        tasks.send_campaign_batch.apply_async((campaign.pk,), task_id=task_id)
    workers.start(2)

    wait_until(is_sent(campaign), what="sent", workers=workers)
    assert mail_server.received() == Counter({p.email: 1 for p in people})
    assert set(Delivery.objects.filter(campaign=campaign).values_list("status", "attempts")) == {("sent", 1)}


# --- Answers from the SMTP server -----------------------------------------------------------------


def test_it_retries_a_451_resumes_after_a_dropped_connection_and_fails_a_550(
    workers: Workers, signup_form: SignupForm, news: Audience, owner: User, mail_server: MailServer
) -> None:
    busy, dropped, unknown, fine = (
        confirmed(signup_form, [news], f"{name}@example.com") for name in ("busy", "dropped", "unknown", "fine")
    )
    mail_server.answers.update(
        {
            busy.email: ["451 4.3.0 Mailbox busy, try again later"],
            dropped.email: [DROP],
            unknown.email: ["550 5.1.1 No such user"],
        }
    )
    campaign = new_campaign(signup_form.brand, [news], owner)
    workers.start()
    delivery.schedule(campaign=campaign, user=owner)

    wait_until(is_sent(campaign), what="sent", workers=workers, reconcile=Counter())
    assert mail_server.answers == {busy.email: [], dropped.email: [], unknown.email: []}  # every script was played
    assert mail_server.received() == Counter({busy.email: 1, dropped.email: 1, fine.email: 1})
    rows = {d.subscriber.email: d for d in Delivery.objects.filter(campaign=campaign).select_related("subscriber")}
    assert (rows[busy.email].status, rows[busy.email].attempts, rows[busy.email].reason) == ("sent", 2, "")
    assert (rows[dropped.email].status, rows[dropped.email].attempts) == ("sent", 2)
    assert (rows[fine.email].status, rows[fine.email].attempts) == ("sent", 1)
    # The test server offers PIPELINING, so the envelope of the message after the dropped one was on the
    # wire when the connection broke: its fate unknown, it is retried once, then refused for good.
    assert rows[unknown.email].status == "failed"
    assert rows[unknown.email].attempts in (1, 2)
    assert rows[unknown.email].reason == "550 5.1.1 No such user"
    assert rows[busy.email].message_id
    assert rows[unknown.email].message_id == ""


# --- The message as received ----------------------------------------------------------------------


def test_a_received_message_has_one_click_unsubscribe_headers_and_a_footer_that_work(
    workers: Workers,
    live_server: Any,
    signup_form: SignupForm,
    news: Audience,
    offers: Audience,
    owner: User,
    mail_server: MailServer,
) -> None:
    dana = confirmed(signup_form, [news, offers], "dana@example.com")
    campaign = new_campaign(signup_form.brand, [news], owner)
    workers.start()
    delivery.schedule(campaign=campaign, user=owner)
    wait_until(is_sent(campaign), what="sent", workers=workers)

    [message] = mail_server.wait_for(1)
    sent = Delivery.objects.get(campaign=campaign)
    assert message["Message-ID"] == sent.message_id
    assert message.get_all("X-Assent-Delivery") == [verp.token(sent.pk)]
    [unsubscribe] = message.get_all("List-Unsubscribe") or []
    # Django folds the long header right after "List-Unsubscribe:" (legal folding white space).
    target = unsubscribe.strip()
    assert target.startswith("<")
    assert target.endswith(">")
    assert target.count("<") == 1  # one target: no second URL, no mailto:
    url = target[1:-1]
    assert urlsplit(url).scheme == "https"
    assert urlsplit(url).netloc == "assent.test"
    assert message.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
    [list_id] = message.get_all("List-Id") or []
    assert list_id.startswith(f"{news.name} <")
    assert list_id.endswith(".assent.test>")
    text = message.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = message.get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    for part in (text, html):
        assert "Acme Tea, 2 Leaf Lane, Bristol BS1 1AA" in part
        assert url in part

    # What a mailbox provider does with the header: POST the body of RFC 8058 to the URL
    # (served here by the live server: the same path, on its own host).
    request = urllib.request.Request(
        live_server.url + urlsplit(url).path,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    statuses = dict(dana.subscriptions.values_list("audience__name", "status"))
    assert statuses == {news.name: Subscription.Status.INACTIVE, offers.name: Subscription.Status.ACTIVE}
    event = dana.consent_events.get(kind=ConsentEvent.Kind.UNSUBSCRIBED)
    assert event.source == ConsentEvent.Source.ONE_CLICK
    assert event.audiences == [{"id": news.pk, "name": news.name}]


# --- Losing a worker, losing Redis ------------------------------------------------------------------


def test_a_worker_killed_mid_campaign_is_replaced_and_everyone_gets_the_message(
    workers: Workers,
    signup_form: SignupForm,
    news: Audience,
    owner: User,
    mail_server: MailServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    addresses = seed_confirmed(form=signup_form, audience=news, count=2000)
    campaign = new_campaign(signup_form.brand, [news], owner)
    mail_server.delay = 0.001  # a little time per message, as a real server takes
    [first] = workers.start()
    started = time.monotonic()
    delivery.schedule(campaign=campaign, user=owner)

    # Kill in the middle of a batch: 615 messages accepted, those from 601 on not yet recorded as sent.
    wait_until(lambda: mail_server.received().total() >= 615, what="615 received", workers=workers, timeout=60)
    first.kill()
    in_flight = Delivery.objects.filter(campaign=campaign, status=Delivery.Status.SENDING).count()
    recorded = sent_count(campaign)
    killed = time.monotonic()
    workers.start()
    stats: Counter[str] = Counter()
    wait_until(is_sent(campaign), what="sent after the kill", workers=workers, timeout=90, reconcile=stats)
    finished = time.monotonic()

    received = mail_server.received()
    assert set(received) == set(addresses), f"{len(set(addresses) - set(received))} recipients got nothing"
    duplicates = sum(n - 1 for n in received.values())
    assert Delivery.objects.filter(campaign=campaign).count() == 2000
    assert set(Delivery.objects.filter(campaign=campaign).values_list("status", flat=True)) == {"sent"}
    with capsys.disabled():
        print(
            f"\n[kill -9] 2000 recipients: killed after {killed - started:.1f}s with {recorded} recorded sent and "
            f"{in_flight} in flight; {duplicates} duplicate(s); sent {finished - killed:.1f}s after the kill; "
            f"reconciler: {dict(stats)}"
        )
    assert duplicates <= in_flight <= BATCH


def test_when_redis_loses_the_queue_mid_campaign_the_reconciler_finishes_it(
    workers: Workers, signup_form: SignupForm, news: Audience, owner: User, mail_server: MailServer
) -> None:
    addresses = seed_confirmed(form=signup_form, audience=news, count=300)
    campaign = new_campaign(signup_form.brand, [news], owner)
    workers.start()
    delivery.schedule(campaign=campaign, user=owner)
    wait_until(lambda: sent_count(campaign) >= 50, what="a batch sent", workers=workers)

    # One FLUSHDB usually spares the batch that is running: it enqueues its successor after
    # the flush. So flush every millisecond until the send has stalled (no batch in flight and
    # no heartbeat for a second, work left), the worst case, which only the reconciler mends.
    def state() -> tuple[Any, bool]:
        beat = Campaign.objects.values_list("heartbeat_at", flat=True).get(pk=campaign.pk)
        return beat, Delivery.objects.filter(campaign=campaign, status=Delivery.Status.SENDING).exists()

    last, quiet_since, deadline = state(), time.monotonic(), time.monotonic() + 20
    while time.monotonic() - quiet_since < 1:
        for _ in range(20):
            workers.broker.flushdb()
            time.sleep(0.001)
        current = state()
        if current != last or current[1]:
            last, quiet_since = current, time.monotonic()
        assert time.monotonic() < deadline, "the send never stalled"
    assert Delivery.objects.filter(campaign=campaign, status=Delivery.Status.QUEUED).exists(), "it finished first"
    assert not workers.broker.exists(QUEUE)  # no batch task is left anywhere
    stalled = sent_count(campaign)

    stats: Counter[str] = Counter()
    wait_until(is_sent(campaign), what="sent after the flush", workers=workers, timeout=40, reconcile=stats)
    assert stats["restarted"] >= 1
    assert sent_count(campaign) == 300 > stalled
    assert mail_server.received() == Counter({address: 1 for address in addresses})
