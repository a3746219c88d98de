"""The consent operations: request_subscription, confirm, purge_unconfirmed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.exceptions import ValidationError
from django.utils import timezone

from audiences import consent
from audiences.consent import Evidence, Outcome
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
from audiences.signup_forms import set_wording

FORM = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM, ip="203.0.113.7", user_agent="UA")


def request(form: SignupForm, audiences: list[Audience], email: str = "dana@example.com", **kw: Any) -> Outcome:
    return consent.request_subscription(form=form, email=email, audiences=audiences, evidence=FORM, **kw)


def confirm_all(subscriber: Subscriber) -> Outcome:
    ids = list(subscriber.subscriptions.values_list("audience_id", flat=True))
    return consent.confirm(subscriber=subscriber, audience_ids=ids, evidence=FORM)


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> Any:
    return lambda: django_capture_on_commit_callbacks(execute=True)


def test_it_creates_a_pending_subscriber_and_sends_one_confirmation(
    signup_form: SignupForm, news: Audience, on_commit: Any
) -> None:
    with on_commit():
        outcome = request(signup_form, [news], email="  Dana@EXAMPLE.com ", name="Dana")
    assert outcome == Outcome.CONFIRMATION_QUEUED
    subscriber = Subscriber.objects.get()
    assert subscriber.email == "dana@example.com"
    assert subscriber.email_hash == email_hash("dana@example.com")
    assert subscriber.status == Subscriber.Status.PENDING
    assert list(subscriber.subscriptions.values_list("audience__name", "status")) == [("Weekly news", "pending")]
    [event] = subscriber.consent_events.all()
    assert (event.kind, event.actor, event.source) == ("requested", "consumer", "form")
    assert (event.ip, event.user_agent) == ("203.0.113.7", "UA")
    assert event.wording_text == signup_form.current_wording().text
    assert event.details == {"wording_version": 1}
    assert event.audiences == [{"id": news.pk, "name": "Weekly news"}]
    [message] = mail.outbox
    assert message.to == ["Dana <dana@example.com>"]
    assert message.from_email == "Acme Tea <news@acme.example>"
    assert "Weekly news" in message.body
    assert "nothing more will arrive" in message.body
    assert ConsumerEmail.objects.get().status == ConsumerEmail.Status.SENT


def test_it_records_the_wording_version_the_person_was_shown(
    signup_form: SignupForm, news: Audience, on_commit: Any
) -> None:
    old = signup_form.current_wording()
    set_wording(form=signup_form, text="New and improved wording.")
    with on_commit():
        request(signup_form, [news], wording_version=old.version)
    event = ConsentEvent.objects.get()
    assert event.wording == old
    assert event.wording_text == old.text


def test_it_refuses_audiences_the_form_does_not_offer(signup_form: SignupForm, other_brand: Any) -> None:
    foreign = Audience.objects.create(brand=other_brand, name="Foreign")
    with pytest.raises(ValueError, match="subset"):
        request(signup_form, [foreign])
    assert not Subscriber.objects.exists()


@pytest.mark.parametrize("email", ["", "not-an-address", "a@b", "x" * 250 + "@example.com", "a@example.com\r\nBcc: x"])
def test_it_rejects_invalid_addresses(signup_form: SignupForm, news: Audience, email: str) -> None:
    with pytest.raises(ValidationError):
        request(signup_form, [news], email=email)
    assert not Subscriber.objects.exists()


@pytest.mark.parametrize("reason", [Suppression.Reason.BLOCKED, Suppression.Reason.TEAM, Suppression.Reason.ERASED])
def test_it_sends_nothing_to_an_address_suppressed_for_good(
    signup_form: SignupForm, news: Audience, on_commit: Any, reason: str
) -> None:
    Suppression.objects.create(brand=signup_form.brand, email_hash=email_hash("dana@example.com"), reason=reason)
    with on_commit():
        assert request(signup_form, [news]) == Outcome.SUPPRESSED
    assert not Subscriber.objects.exists()
    assert mail.outbox == []


def test_it_sends_nothing_to_a_blocked_subscriber(signup_form: SignupForm, news: Audience, on_commit: Any) -> None:
    with on_commit():
        request(signup_form, [news])
    Subscriber.objects.update(status=Subscriber.Status.BLOCKED)
    mail.outbox.clear()
    with on_commit():
        assert request(signup_form, [news]) == Outcome.BLOCKED
    assert mail.outbox == []
    assert ConsentEvent.objects.count() == 1


def test_a_confirmed_subscriber_asking_for_more_gets_a_confirmation_for_just_those(
    signup_form: SignupForm, news: Audience, offers: Audience, on_commit: Any
) -> None:
    with on_commit():
        request(signup_form, [news])
    subscriber = Subscriber.objects.get()
    confirm_all(subscriber)
    mail.outbox.clear()
    ConsumerEmail.objects.update(created_at=timezone.now() - timedelta(hours=1))
    with on_commit():
        assert request(signup_form, [news, offers]) == Outcome.CONFIRMATION_QUEUED
    [message] = mail.outbox
    assert "Offers" in message.body
    assert "Weekly news" not in message.body
    statuses = dict(subscriber.subscriptions.values_list("audience__name", "status"))
    assert statuses == {"Weekly news": "active", "Offers": "pending"}
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.CONFIRMED


def test_a_confirmed_subscriber_asking_again_for_the_same_changes_nothing(
    signup_form: SignupForm, news: Audience, on_commit: Any
) -> None:
    with on_commit():
        request(signup_form, [news])
    confirm_all(Subscriber.objects.get())
    mail.outbox.clear()
    events = ConsentEvent.objects.count()
    with on_commit():
        assert request(signup_form, [news]) == Outcome.ALREADY_SUBSCRIBED
    assert mail.outbox == []
    assert ConsentEvent.objects.count() == events


def test_it_throttles_confirmation_emails_per_address(
    signup_form: SignupForm, news: Audience, on_commit: Any, settings: Any
) -> None:
    settings.CONFIRMATION_DAILY_CAP = 2
    with on_commit():
        assert request(signup_form, [news]) == Outcome.CONFIRMATION_QUEUED
        assert request(signup_form, [news]) == Outcome.THROTTLED  # within 10 minutes
    ConsumerEmail.objects.update(created_at=timezone.now() - timedelta(minutes=11))
    with on_commit():
        assert request(signup_form, [news]) == Outcome.CONFIRMATION_QUEUED
    ConsumerEmail.objects.update(created_at=timezone.now() - timedelta(minutes=11))
    with on_commit():
        assert request(signup_form, [news]) == Outcome.THROTTLED  # daily cap of 2
    assert len(mail.outbox) == 2
    # Every request is still evidence, even when no email went out.
    assert ConsentEvent.objects.filter(kind=ConsentEvent.Kind.REQUESTED).count() == 4


def test_an_unsubscribed_person_needs_a_new_double_opt_in(
    signup_form: SignupForm, news: Audience, on_commit: Any
) -> None:
    with on_commit():
        request(signup_form, [news])
    subscriber = Subscriber.objects.get()
    confirm_all(subscriber)
    Subscriber.objects.update(status=Subscriber.Status.UNSUBSCRIBED)
    Subscription.objects.update(status=Subscription.Status.INACTIVE)
    ConsumerEmail.objects.update(created_at=timezone.now() - timedelta(hours=1))
    mail.outbox.clear()
    with on_commit():
        assert request(signup_form, [news]) == Outcome.CONFIRMATION_QUEUED
    assert len(mail.outbox) == 1
    assert Subscription.objects.get().status == Subscription.Status.PENDING
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    assert confirm_all(subscriber) == Outcome.CONFIRMED
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.CONFIRMED
    assert Subscriber.objects.eligible(audience_ids=[news.pk]).get() == subscriber


def test_confirm_activates_pending_audiences_and_is_idempotent(
    signup_form: SignupForm, news: Audience, offers: Audience, on_commit: Any
) -> None:
    with on_commit():
        request(signup_form, [news, offers])
    subscriber = Subscriber.objects.get()
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    assert consent.confirm(subscriber=subscriber, audience_ids=[news.pk], evidence=FORM) == Outcome.CONFIRMED
    assert consent.confirm(subscriber=subscriber, audience_ids=[news.pk], evidence=FORM) == Outcome.ALREADY_CONFIRMED
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.CONFIRMED
    assert subscriber.confirmed_at is not None
    statuses = dict(subscriber.subscriptions.values_list("audience__name", "status"))
    assert statuses == {"Weekly news": "active", "Offers": "pending"}
    assert list(subscriber.consent_events.values_list("kind", flat=True)) == ["requested", "confirmed"]
    assert Subscriber.objects.eligible(audience_ids=[news.pk]).get() == subscriber
    assert not Subscriber.objects.eligible(audience_ids=[offers.pk]).exists()


@pytest.mark.parametrize("reason", ["blocked", "team", "erased"])
def test_confirm_refuses_an_address_suppressed_for_good(
    signup_form: SignupForm, news: Audience, on_commit: Any, reason: str
) -> None:
    with on_commit():
        request(signup_form, [news])
    subscriber = Subscriber.objects.get()
    Suppression.objects.create(brand=subscriber.brand, email_hash=subscriber.email_hash, reason=reason)
    with pytest.raises(consent.ConsentRefused):
        confirm_all(subscriber)
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.PENDING


def test_consent_events_are_append_only(signup_form: SignupForm, news: Audience, on_commit: Any) -> None:
    with on_commit():
        request(signup_form, [news])
    event = ConsentEvent.objects.get()
    event.kind = ConsentEvent.Kind.CONFIRMED
    with pytest.raises(TypeError):
        event.save()
    with pytest.raises(TypeError):
        ConsentEvent.objects.update(kind="confirmed")
    assert ConsentEvent.objects.get().kind == ConsentEvent.Kind.REQUESTED


def test_purge_deletes_old_unconfirmed_requests_with_their_personal_data(
    signup_form: SignupForm, news: Audience, offers: Audience, on_commit: Any, settings: Any
) -> None:
    settings.PENDING_PURGE_DAYS = 30
    with on_commit():
        request(signup_form, [news], email="old@example.com")
        request(signup_form, [news], email="fresh@example.com")
        request(signup_form, [news], email="kept@example.com")
    kept = Subscriber.objects.get(email="kept@example.com")
    confirm_all(kept)
    ConsumerEmail.objects.update(created_at=timezone.now() - timedelta(hours=1))
    with on_commit():
        request(signup_form, [offers], email="kept@example.com")  # a new pending audience
    long_ago = timezone.now() - timedelta(days=31)
    Subscriber.objects.filter(email="old@example.com").update(created_at=long_ago)
    Subscription.objects.filter(subscriber__email__in=["old@example.com", "kept@example.com"]).filter(
        status="pending"
    ).update(requested_at=long_ago)

    assert consent.purge_unconfirmed() == (1, 1)

    assert set(Subscriber.objects.values_list("email", flat=True)) == {"fresh@example.com", "kept@example.com"}
    assert not ConsentEvent.objects.filter(subscriber__email="old@example.com").exists()
    assert not ConsumerEmail.objects.filter(subscriber__email="old@example.com").exists()
    assert dict(kept.subscriptions.values_list("audience__name", "status")) == {"Weekly news": "active"}


def test_the_database_refuses_updates_to_consent_events(
    signup_form: SignupForm, news: Audience, on_commit: Any
) -> None:
    from django.db import DatabaseError, connection, transaction

    with on_commit():
        request(signup_form, [news])
    if connection.vendor != "postgresql":
        # The trigger is PostgreSQL's (the test command runs there); elsewhere the model guard stands alone.
        with pytest.raises(TypeError):
            ConsentEvent.objects.update(kind="confirmed")
        assert ConsentEvent.objects.get().kind == ConsentEvent.Kind.REQUESTED
        return
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE audiences_consentevent SET kind = 'confirmed'")
    assert ConsentEvent.objects.get().kind == ConsentEvent.Kind.REQUESTED


def test_deleting_a_team_member_keeps_the_events_they_recorded(
    signup_form: SignupForm, news: Audience, owner: Any
) -> None:
    team = Evidence(actor=ConsentEvent.Actor.TEAM, source=ConsentEvent.Source.DASHBOARD, actor_user=owner)
    consent.request_subscription(form=signup_form, email="gus@example.com", audiences=[news], evidence=team)
    owner.delete()
    event = ConsentEvent.objects.get()
    assert (event.actor, event.actor_user) == ("team", None)
