"""The preference centre: every action, its consent event, and the eligibility effect."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.apps import apps
from django.core import mail
from django.db import connection
from django.test import Client
from django.utils import timezone

from audiences import consent, links
from audiences.consent import Evidence
from audiences.models import (
    Audience,
    ConsentEvent,
    ConsumerEmail,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)
from tests.conftest import db_snapshot

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM, ip="198.51.100.23")


@pytest.fixture
def dana(signup_form: SignupForm, news: Audience, offers: Audience) -> Subscriber:
    """Confirmed for Weekly news only."""
    consent.request_subscription(
        form=signup_form, email="dana@example.com", name="Dana Scully", audiences=[news], evidence=EVIDENCE
    )
    subscriber = Subscriber.objects.get()
    consent.confirm(subscriber=subscriber, audience_ids=[news.pk], evidence=EVIDENCE)
    subscriber.refresh_from_db()
    return subscriber


@pytest.fixture
def path(dana: Subscriber) -> str:
    return "/p/" + links.manage_url(dana).split("/p/", 1)[1]


def save(client: Client, path: str, **data: Any) -> Any:
    form = {"action": "save", "frequency": "published", "name": "Dana Scully", "language": "en", **data}
    return client.post(path, form, REMOTE_ADDR="203.0.113.9", HTTP_USER_AGENT="Firefox")


def last_event(subscriber: Subscriber) -> ConsentEvent:
    return subscriber.consent_events.order_by("-created_at", "-pk")[0]


def test_the_centre_shows_every_public_audience_and_changes_nothing(
    client: Client, path: str, dana: Subscriber, brand: Any
) -> None:
    Audience.objects.create(brand=brand, name="Staff only", is_public=False)
    before = db_snapshot()
    response = client.get(path)
    assert response.status_code == 200
    html = response.content.decode()
    assert "dana@example.com" in html
    assert "Weekly news" in html
    assert "Offers" in html
    assert "Staff only" not in html
    for label in [
        "Save preferences",
        "Pause all emails for 30 days",
        "Unsubscribe from everything",
        "Never contact me again",
        "Download my data",
        "Delete me",
    ]:
        assert label in html
    assert db_snapshot() == before
    assert "no-store" in response["Cache-Control"]  # the page shows an address behind a bearer link


def test_switching_an_audience_off_and_on(client: Client, path: str, dana: Subscriber, news: Any, offers: Any) -> None:
    response = save(client, path, audiences=[offers.pk])
    assert response.status_code == 303
    assert dict(dana.subscriptions.values_list("audience__name", "status")) == {
        "Weekly news": "inactive",
        "Offers": "active",
    }
    kinds = list(dana.consent_events.values_list("kind", flat=True))
    assert kinds[-2:] == ["unsubscribed", "resubscribed"]
    rejoin = last_event(dana)
    assert (rejoin.source, rejoin.ip, rejoin.user_agent) == ("preferences", "203.0.113.9", "Firefox")
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    assert Subscriber.objects.eligible(audience_ids=[offers.pk]).exists()


def test_switching_everything_off_unsubscribes_and_back_on_resubscribes(
    client: Client, path: str, dana: Subscriber, news: Any
) -> None:
    save(client, path)
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.UNSUBSCRIBED
    save(client, path, audiences=[news.pk])
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.CONFIRMED
    assert last_event(dana).kind == ConsentEvent.Kind.RESUBSCRIBED
    assert Subscriber.objects.eligible(audience_ids=[news.pk]).get() == dana


def test_profile_and_frequency_changes_are_recorded(client: Client, path: str, dana: Subscriber, news: Any) -> None:
    save(client, path, audiences=[news.pk], name="Dana K. Scully", language="de", frequency="monthly")
    dana.refresh_from_db()
    assert (dana.name, dana.language, dana.frequency) == ("Dana K. Scully", "de", "monthly")
    event = last_event(dana)
    assert event.kind == ConsentEvent.Kind.PREFERENCES
    assert event.details == {"name": "Dana K. Scully", "language": "de", "frequency": "monthly"}
    # The page now speaks the subscriber's language.
    assert "Ihre Abonnements" in client.get(path).content.decode()


def test_saving_without_changes_writes_no_event(client: Client, path: str, dana: Subscriber, news: Any) -> None:
    events = dana.consent_events.count()
    save(client, path, audiences=[news.pk])
    assert dana.consent_events.count() == events


def test_bad_input_is_a_form_error(client: Client, path: str, dana: Subscriber, news: Any) -> None:
    before = db_snapshot()
    response = save(client, path, audiences=[news.pk], frequency="hourly")
    assert response.status_code == 400
    assert db_snapshot() == before


@pytest.mark.parametrize(("action", "days"), [("pause30", 30), ("pause90", 90)])
def test_pausing(client: Client, path: str, dana: Subscriber, news: Any, action: str, days: int) -> None:
    response = client.post(path, {"action": action})
    assert response.status_code == 303
    dana.refresh_from_db()
    assert dana.paused_until is not None
    assert abs((dana.paused_until - timezone.now()) - timedelta(days=days)) < timedelta(minutes=1)
    assert last_event(dana).kind == ConsentEvent.Kind.PAUSED
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    client.post(path, {"action": "resume"})
    dana.refresh_from_db()
    assert dana.paused_until is None
    assert Subscriber.objects.eligible(audience_ids=[news.pk]).exists()


def test_unsubscribe_from_everything(client: Client, path: str, dana: Subscriber, news: Any) -> None:
    client.post(path, {"action": "unsubscribe_all"})
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.UNSUBSCRIBED
    assert last_event(dana).details == {"scope": "all"}
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()


def test_never_contact_me_again_asks_first_then_blocks_and_suppresses(
    client: Client, path: str, dana: Subscriber, news: Any, signup_form: SignupForm
) -> None:
    before = db_snapshot()
    confirm_page = client.post(path, {"action": "block"})
    assert confirm_page.status_code == 200
    assert "Yes, never contact me again" in confirm_page.content.decode()
    assert db_snapshot() == before
    response = client.post(f"{path}block/")
    assert response.status_code == 200
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert Suppression.objects.get().reason == Suppression.Reason.BLOCKED
    assert last_event(dana).kind == ConsentEvent.Kind.BLOCKED
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    # A stale link cannot re-enable a blocked person.
    save(client, path, audiences=[news.pk])
    assert dana.subscriptions.get().status == Subscription.Status.INACTIVE
    with pytest.raises(consent.ConsentRefused):
        consent.resubscribe(subscriber=dana, audience_ids=[news.pk], evidence=EVIDENCE)


def test_download_my_data(client: Client, path: str, dana: Subscriber) -> None:
    response = client.post(path, {"action": "export"})
    assert response.status_code == 200
    assert response["Content-Disposition"] == 'attachment; filename="acme-my-data.json"'
    data = json.loads(response.content)
    assert data["profile"]["email"] == "dana@example.com"
    assert data["profile"]["name"] == "Dana Scully"
    assert data["controller"]["name"] == "Acme Tea"
    assert [s["audience"] for s in data["subscriptions"]] == ["Weekly news"]
    assert [e["kind"] for e in data["consent_history"]] == ["requested", "confirmed"]
    assert data["consent_history"][0]["wording"] == "Yes, email me what I ticked. I can unsubscribe at any time."
    assert data["consent_history"][0]["ip"] == "198.51.100.23"
    assert data["messages_sent"][0]["kind"] == "confirm"


def _every_text_value() -> str:
    """Every textual value in every table of the database, as one string."""
    chunks: list[str] = []
    with connection.cursor() as cursor:
        for model in apps.get_models():
            table = model._meta.db_table
            cursor.execute(f'SELECT * FROM "{table}"')  # noqa: S608 (table names come from the models)
            chunks.extend(str(value) for row in cursor.fetchall() for value in row if value is not None)
    return "\n".join(chunks)


def test_delete_me_asks_first_then_leaves_no_personal_data_anywhere(
    client: Client, path: str, dana: Subscriber, signup_form: SignupForm, news: Any
) -> None:
    confirm_page = client.post(path, {"action": "erase"})
    assert "Yes, delete me" in confirm_page.content.decode()
    assert Subscriber.objects.exists()
    response = client.post(f"{path}erase/")
    assert response.status_code == 200
    assert "What we kept, and why" in response.content.decode()

    everything = _every_text_value()
    for personal in ["dana@example.com", "Dana Scully", "198.51.100.23", "203.0.113"]:
        assert personal not in everything
    assert not Subscriber.objects.exists()
    assert not ConsentEvent.objects.exists()
    assert not ConsumerEmail.objects.exists()
    assert Suppression.objects.get().email_hash == email_hash("dana@example.com")
    # The old link is dead, and the address can never be added again.
    assert client.get(path).status_code == 400
    assert (
        consent.request_subscription(form=signup_form, email="Dana@example.com", audiences=[news], evidence=EVIDENCE)
        == consent.Outcome.SUPPRESSED
    )
    assert not Subscriber.objects.exists()


def test_rotating_the_secret_kills_old_manage_links(client: Client, path: str, dana: Subscriber) -> None:
    links.rotate(subscriber=dana)
    assert client.get(path).status_code == 400
    fresh = "/p/" + links.manage_url(dana).split("/p/", 1)[1]
    assert client.get(fresh).status_code == 200


def test_manage_links_outlive_60_days_and_expire_later(
    client: Client, dana: Subscriber, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from django.core import signing

    settings.MANAGE_LINK_DAYS = 90
    real_time = signing.time.time  # type: ignore[attr-defined]
    for days_ago, status in [(61, 200), (91, 410)]:
        with monkeypatch.context() as m:
            m.setattr(signing.time, "time", lambda d=days_ago: real_time() - d * 86400)  # type: ignore[attr-defined]
            old = "/p/" + links.manage_url(dana).split("/p/", 1)[1]
        assert client.get(old).status_code == status


def test_a_token_for_another_brand_or_subscriber_is_refused(
    client: Client, dana: Subscriber, signup_form: SignupForm, news: Any
) -> None:
    consent.request_subscription(form=signup_form, email="eve@example.com", audiences=[news], evidence=EVIDENCE)
    eve = Subscriber.objects.get(email="eve@example.com")
    token = links.make_token(links.Purpose.MANAGE, dana)
    assert client.get(f"/p/{eve.pk}.{token.partition('.')[2]}/").status_code == 400
    confirm_token = links.make_token(links.Purpose.CONFIRM, dana, a=[news.pk])
    assert client.get(f"/p/{confirm_token}/").status_code == 400


def test_manage_my_subscription_emails_a_fresh_link_with_a_neutral_answer(
    client: Client, dana: Subscriber, django_capture_on_commit_callbacks: Any
) -> None:
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        known = client.post("/m/acme/", {"email": "DANA@example.com"})
        unknown = client.post("/m/acme/", {"email": "nobody@example.com"})
    assert known.status_code == unknown.status_code == 303
    assert known["Location"] == unknown["Location"] == "/m/acme/sent/"
    assert b"Check your inbox" in client.get(known["Location"]).content
    [message] = mail.outbox
    assert message.to == ["Dana Scully <dana@example.com>"]
    link = message.body.split("http://127.0.0.1:8000", 1)[1].split()[0]
    assert client.get(link).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/m/acme/", {"email": "dana@example.com"})  # within 10 minutes: no second email
    assert len(mail.outbox) == 1


def test_manage_my_subscription_is_rate_limited_per_ip(
    client: Client, dana: Subscriber, settings: Any, django_capture_on_commit_callbacks: Any
) -> None:
    settings.SIGNUP_LIMIT_PER_IP_PER_HOUR = 1
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        client.post("/m/acme/", {"email": "someone@example.com"})
        assert client.post("/m/acme/", {"email": "dana@example.com"}).status_code == 303
    assert mail.outbox == []
