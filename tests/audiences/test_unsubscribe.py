"""Unsubscribe links and RFC 8058 one-click unsubscribe."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from django.test.client import MULTIPART_CONTENT, encode_multipart

from audiences import consent, links
from audiences.consent import Evidence
from audiences.models import Audience, ConsentEvent, SignupForm, Subscriber, Subscription
from tests.conftest import db_snapshot

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
ONE_CLICK = "List-Unsubscribe=One-Click"


@pytest.fixture
def confirmed(signup_form: SignupForm, news: Audience, offers: Audience) -> Subscriber:
    consent.request_subscription(
        form=signup_form, email="dana@example.com", audiences=[news, offers], evidence=EVIDENCE
    )
    subscriber = Subscriber.objects.get()
    consent.confirm(subscriber=subscriber, audience_ids=[news.pk, offers.pk], evidence=EVIDENCE)
    subscriber.refresh_from_db()
    return subscriber


def path_for(subscriber: Subscriber, audiences: list[Audience]) -> str:
    return "/u/" + links.unsubscribe_url(subscriber, audiences).split("/u/", 1)[1]


def statuses(subscriber: Subscriber) -> dict[str, str]:
    return dict(subscriber.subscriptions.values_list("audience__name", "status"))


def test_one_click_form_encoded_unsubscribes_from_the_message_audiences(
    confirmed: Subscriber, news: Audience, offers: Audience
) -> None:
    client = Client(enforce_csrf_checks=True)  # no cookie, no CSRF token: must still work
    response = client.post(path_for(confirmed, [news]), ONE_CLICK, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 200
    assert "Location" not in response
    assert response["Content-Type"].startswith("text/plain")
    assert statuses(confirmed) == {"Weekly news": "inactive", "Offers": "active"}
    event = confirmed.consent_events.get(kind=ConsentEvent.Kind.UNSUBSCRIBED)
    assert (event.actor, event.source) == ("consumer", "one_click")
    assert event.audiences == [{"id": news.pk, "name": "Weekly news"}]
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()
    assert Subscriber.objects.eligible(audience_ids=[offers.pk]).exists()


def test_one_click_multipart_works_too(confirmed: Subscriber, news: Audience, offers: Audience) -> None:
    client = Client(enforce_csrf_checks=True)
    body = encode_multipart("BoUnDaRy", {"List-Unsubscribe": "One-Click"})
    response = client.post(
        path_for(confirmed, [news, offers]), body, content_type="multipart/form-data; boundary=BoUnDaRy"
    )
    assert response.status_code == 200
    assert "Location" not in response
    confirmed.refresh_from_db()
    assert confirmed.status == Subscriber.Status.UNSUBSCRIBED
    assert confirmed.unsubscribed_at is not None
    assert MULTIPART_CONTENT.startswith("multipart/form-data")


def test_one_click_with_a_session_cookie_works_the_same(client: Client, confirmed: Subscriber, news: Audience) -> None:
    client.cookies["sessionid"] = "whatever"
    client.cookies["csrftoken"] = "x" * 32
    response = client.post(path_for(confirmed, [news]), {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200


def test_repeating_one_click_is_harmless(client: Client, confirmed: Subscriber, news: Audience) -> None:
    path = path_for(confirmed, [news])
    client.post(path, {"List-Unsubscribe": "One-Click"})
    before = db_snapshot()
    assert client.post(path, {"List-Unsubscribe": "One-Click"}).status_code == 200
    assert db_snapshot() == before
    assert confirmed.consent_events.filter(kind=ConsentEvent.Kind.UNSUBSCRIBED).count() == 1


@pytest.mark.parametrize("body", [{"List-Unsubscribe": "Yes"}, {"unsubscribe": "1"}, {}])
def test_a_wrong_body_is_a_400_and_changes_nothing(
    client: Client, confirmed: Subscriber, news: Audience, body: dict[str, str]
) -> None:
    before = db_snapshot()
    response = client.post(path_for(confirmed, [news]), body)
    assert response.status_code == 400
    assert db_snapshot() == before


def test_an_invalid_token_is_a_4xx(client: Client, confirmed: Subscriber, news: Audience) -> None:
    path = path_for(confirmed, [news])
    response = client.post(path[:-5] + "XXXX/", {"List-Unsubscribe": "One-Click"})
    assert response.status_code == 400
    manage = "/u/" + links.manage_url(confirmed).split("/p/", 1)[1]  # a manage token is not an unsubscribe token
    assert client.post(manage, {"List-Unsubscribe": "One-Click"}).status_code == 400
    assert statuses(confirmed) == {"Weekly news": "active", "Offers": "active"}


def test_get_shows_one_button_and_changes_nothing(client: Client, confirmed: Subscriber, news: Audience) -> None:
    before = db_snapshot()
    response = client.get(path_for(confirmed, [news]))
    assert response.status_code == 200
    html = response.content.decode()
    assert "Unsubscribe from Weekly news" in html
    assert "Unsubscribe from everything from Acme Tea" in html
    assert db_snapshot() == before


def test_the_page_button_unsubscribes_and_links_to_the_preference_centre(
    client: Client, confirmed: Subscriber, news: Audience
) -> None:
    response = client.post(path_for(confirmed, [news]), {"scope": "list"})
    assert response.status_code == 200
    assert "/p/" in response.content.decode()
    assert statuses(confirmed) == {"Weekly news": "inactive", "Offers": "active"}
    event = confirmed.consent_events.get(kind=ConsentEvent.Kind.UNSUBSCRIBED)
    assert event.source == ConsentEvent.Source.EMAIL_LINK


def test_the_page_can_unsubscribe_from_everything(client: Client, confirmed: Subscriber, news: Audience) -> None:
    client.post(path_for(confirmed, [news]), {"scope": "all"})
    confirmed.refresh_from_db()
    assert confirmed.status == Subscriber.Status.UNSUBSCRIBED
    assert set(statuses(confirmed).values()) == {Subscription.Status.INACTIVE}
    assert not Subscriber.objects.eligible(audience_ids=[news.pk]).exists()


def test_unsubscribe_headers_are_exactly_one_of_each(confirmed: Subscriber, news: Audience, settings: Any) -> None:
    settings.SITE_URL = "https://lists.acme.example"
    headers = links.unsubscribe_headers(confirmed, [news])
    assert set(headers) == {"List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"}
    assert headers["List-Unsubscribe"].startswith("<https://lists.acme.example/u/")
    assert headers["List-Unsubscribe"].count("<") == 1
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["List-Id"] == f"Weekly news <weekly-news.{news.pk}.{news.brand_id}.lists.acme.example>"


def test_the_confirmation_email_carries_the_unsubscribe_headers(
    signup_form: SignupForm, news: Audience, django_capture_on_commit_callbacks: Any, client: Client
) -> None:
    from django.core import mail

    with django_capture_on_commit_callbacks(execute=True):
        consent.request_subscription(form=signup_form, email="eve@example.com", audiences=[news], evidence=EVIDENCE)
    [message] = mail.outbox
    assert message.extra_headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = message.extra_headers["List-Unsubscribe"].strip("<>")
    # Withdrawing a request before confirming it is possible from the header too.
    client.post("/u/" + url.split("/u/", 1)[1], {"List-Unsubscribe": "One-Click"})
    assert Subscription.objects.get().status == Subscription.Status.INACTIVE
