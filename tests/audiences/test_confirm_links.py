"""Confirmation links: purpose-bound signed tokens; GET shows a button, POST confirms."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.core import signing
from django.test import Client

from audiences import consent, links
from audiences.consent import Evidence
from audiences.models import Audience, ConsentEvent, SignupForm, Subscriber, Suppression
from tests.conftest import db_snapshot

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)


@pytest.fixture
def pending(signup_form: SignupForm, news: Audience) -> Subscriber:
    consent.request_subscription(form=signup_form, email="dana@example.com", audiences=[news], evidence=EVIDENCE)
    return Subscriber.objects.get()


def confirm_path(subscriber: Subscriber, audiences: list[int]) -> str:
    url = links.make_url(links.Purpose.CONFIRM, subscriber, a=audiences, r=1)
    assert url.startswith("http://")
    return "/c/" + url.split("/c/", 1)[1]


def test_links_are_built_on_site_url_not_the_request_host(pending: Subscriber, settings: Any) -> None:
    settings.SITE_URL = "https://lists.acme.example"
    assert links.make_url(links.Purpose.CONFIRM, pending, a=[1]).startswith("https://lists.acme.example/c/")


def test_get_shows_a_confirm_button_and_changes_nothing(client: Client, pending: Subscriber, news: Audience) -> None:
    path = confirm_path(pending, [news.pk])
    before = db_snapshot()
    response = client.get(path, HTTP_USER_AGENT="Mail security scanner")
    assert response.status_code == 200
    html = response.content.decode()
    assert '<button type="submit">Confirm</button>' in html
    assert "Weekly news" in html
    assert db_snapshot() == before


def test_post_confirms_with_evidence(client: Client, pending: Subscriber, news: Audience) -> None:
    response = client.post(confirm_path(pending, [news.pk]), HTTP_USER_AGENT="Firefox", REMOTE_ADDR="192.0.2.5")
    assert response.status_code == 200
    assert b"You&#x27;re subscribed" in response.content or b"You're subscribed" in response.content
    pending.refresh_from_db()
    assert pending.status == Subscriber.Status.CONFIRMED
    event = pending.consent_events.get(kind=ConsentEvent.Kind.CONFIRMED)
    assert (event.actor, event.source, event.ip, event.user_agent) == ("consumer", "email_link", "192.0.2.5", "Firefox")
    assert event.audiences == [{"id": news.pk, "name": "Weekly news"}]


def test_post_twice_is_harmless(client: Client, pending: Subscriber, news: Audience) -> None:
    path = confirm_path(pending, [news.pk])
    client.post(path)
    response = client.post(path)
    assert response.status_code == 200
    assert b"already subscribed" in response.content
    assert pending.consent_events.filter(kind=ConsentEvent.Kind.CONFIRMED).count() == 1


def test_confirm_needs_the_csrf_token_the_page_gave(pending: Subscriber, news: Audience) -> None:
    client = Client(enforce_csrf_checks=True)
    path = confirm_path(pending, [news.pk])
    assert client.post(path).status_code == 403
    page = client.get(path)
    token = page.context["csrf_token"]
    assert client.post(path, {"csrfmiddlewaretoken": str(token)}).status_code == 200


def _tampered(path: str) -> str:
    token = path.removeprefix("/c/").rstrip("/")
    return f"/c/{token[:-3]}{'AAA' if not token.endswith('AAA') else 'BBB'}/"


@pytest.mark.parametrize("method", ["get", "post"])
def test_a_tampered_link_is_a_400_offering_to_sign_up_again(
    client: Client, pending: Subscriber, news: Audience, method: str
) -> None:
    before = db_snapshot()
    response = getattr(client, method)(_tampered(confirm_path(pending, [news.pk])))
    assert response.status_code == 400
    assert b"This link is not valid" in response.content
    assert b"/s/acme/newsletter/" in response.content
    assert db_snapshot() == before


@pytest.mark.parametrize("path", ["/c/garbage/", "/c/999999.abc:def:ghi/", "/c/1./"])
def test_a_malformed_link_is_a_400(client: Client, pending: Subscriber, path: str) -> None:
    assert client.get(path).status_code == 400


def test_an_expired_link_is_a_410(
    client: Client, pending: Subscriber, news: Audience, monkeypatch: pytest.MonkeyPatch
) -> None:
    eight_days_ago = time.time() - 8 * 86400
    with monkeypatch.context() as m:
        m.setattr(signing.time, "time", lambda: eight_days_ago)  # type: ignore[attr-defined]
        path = confirm_path(pending, [news.pk])
    response = client.post(path)
    assert response.status_code == 410
    assert b"This link has expired" in response.content
    pending.refresh_from_db()
    assert pending.status == Subscriber.Status.PENDING


def test_a_token_for_another_purpose_does_not_confirm(pending: Subscriber, news: Audience) -> None:
    other = links._signer("manage", pending).sign_object({"b": pending.brand_id, "a": [news.pk]})  # type: ignore[arg-type]
    with pytest.raises(links.InvalidLink):
        links.read_token(links.Purpose.CONFIRM, f"{pending.pk}.{other}")


def test_a_token_for_another_subscriber_does_not_confirm(
    signup_form: SignupForm, pending: Subscriber, news: Audience
) -> None:
    consent.request_subscription(form=signup_form, email="eve@example.com", audiences=[news], evidence=EVIDENCE)
    eve = Subscriber.objects.get(email="eve@example.com")
    token = links.make_token(links.Purpose.CONFIRM, pending, a=[news.pk])
    _, _, signed = token.partition(".")
    with pytest.raises(links.InvalidLink):
        links.read_token(links.Purpose.CONFIRM, f"{eve.pk}.{signed}")


def test_a_token_claiming_another_brand_does_not_confirm(pending: Subscriber, other_brand: Any) -> None:
    forged = links._signer(links.Purpose.CONFIRM, pending).sign_object({"b": other_brand.pk, "a": []})
    with pytest.raises(links.InvalidLink, match="another brand"):
        links.read_token(links.Purpose.CONFIRM, f"{pending.pk}.{forged}")


def test_rotating_the_subscriber_secret_invalidates_old_links(pending: Subscriber, news: Audience) -> None:
    token = links.make_token(links.Purpose.CONFIRM, pending, a=[news.pk])
    Subscriber.objects.filter(pk=pending.pk).update(token_secret="rotated")
    with pytest.raises(links.InvalidLink):
        links.read_token(links.Purpose.CONFIRM, token)


@pytest.mark.parametrize("reason", ["blocked", "team", "erased"])
def test_an_address_suppressed_for_good_cannot_confirm(
    client: Client, pending: Subscriber, news: Audience, reason: str
) -> None:
    Suppression.objects.create(brand=pending.brand, email_hash=pending.email_hash, reason=reason)
    response = client.post(confirm_path(pending, [news.pk]))
    assert response.status_code == 409
    pending.refresh_from_db()
    assert pending.status == Subscriber.Status.PENDING


def test_a_link_whose_request_was_purged_is_a_410(client: Client, pending: Subscriber, news: Audience) -> None:
    path = confirm_path(pending, [news.pk])
    pending.subscriptions.all().delete()
    assert client.post(path).status_code == 410
