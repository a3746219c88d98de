"""The hosted and embedded signup endpoint and the thank-you page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.test import Client
from django.utils import timezone

from audiences import consent
from audiences.consent import Evidence
from audiences.forms import render_stamp
from audiences.models import ConsentEvent, ConsumerEmail, SignupForm, Subscriber, Suppression, email_hash
from tests.conftest import signup_data

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)


@pytest.fixture
def url(signup_form: SignupForm) -> str:
    return f"/s/{signup_form.brand.slug}/{signup_form.slug}/"


def post(client: Client, url: str, data: dict[str, Any], **extra: Any) -> Any:
    return client.post(url, data, **extra)


def test_the_hosted_page_shows_the_form_wording_and_unticked_audiences(client: Client, url: str) -> None:
    response = client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Join Acme Tea" in html
    assert "Yes, email me what I ticked." in html
    assert 'href="https://acme.example/privacy"' in html
    assert html.count('type="checkbox" name="audiences"') == 2
    assert "checked" not in html
    assert 'name="website"' in html  # honeypot
    assert 'name="ts"' in html


def test_an_unknown_or_inactive_form_is_404(client: Client, signup_form: SignupForm, url: str) -> None:
    assert client.get("/s/acme/nope/").status_code == 404
    SignupForm.objects.update(is_active=False)
    assert client.get(url).status_code == 404


def test_a_signup_redirects_to_the_thank_you_page_and_sends_one_email(
    client: Client, url: str, signup_form: SignupForm, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, url, signup_data(signup_form), HTTP_USER_AGENT="Firefox")
    assert response.status_code == 303
    assert response["Location"] == f"{url}thanks/"
    assert Subscriber.objects.get().status == Subscriber.Status.PENDING
    event = ConsentEvent.objects.get()
    assert event.source == ConsentEvent.Source.FORM
    assert event.ip == "127.0.0.1"
    assert len(mail.outbox) == 1
    assert client.get(response["Location"]).status_code == 200


def test_the_brand_thank_you_url_is_used_when_set(client: Client, url: str, signup_form: SignupForm) -> None:
    SignupForm.objects.update(thank_you_url="https://www.acme.example/thanks")
    response = post(client, url, signup_data(signup_form))
    assert response["Location"] == "https://www.acme.example/thanks"


def test_one_audience_forms_need_no_checkbox(client: Client, url: str, signup_form: SignupForm) -> None:
    signup_form.audiences.remove(signup_form.audiences.order_by("name")[0])
    assert "checkbox" not in client.get(url).content.decode()
    data = signup_data(signup_form)
    del data["audiences"]
    assert post(client, url, data).status_code == 303
    assert Subscriber.objects.get().subscriptions.count() == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("email", "nope", "Enter a valid email address."),
        ("email", "x" * 260 + "@example.com", "at most 254 characters"),
        ("name", "Eve\r\nBcc: victim@example.com", ""),
        ("audiences", [], "Choose at least one."),
        ("audiences", ["999999"], "Select a valid choice."),
    ],
)
def test_bad_input_gets_a_form_error_and_writes_nothing(
    client: Client, url: str, signup_form: SignupForm, field: str, value: Any, message: str
) -> None:
    response = post(client, url, signup_data(signup_form, **{field: value}))
    if field == "name":
        # Whitespace (CR/LF included) is folded away: the name can never reach a header broken.
        assert response.status_code == 303
        assert Subscriber.objects.get().name == "Eve Bcc: victim@example.com"
        return
    assert response.status_code == 400
    assert message in response.content.decode()
    assert 'aria-invalid="true"' in response.content.decode() or field == "audiences"
    assert not Subscriber.objects.exists()


def test_a_name_with_control_characters_is_refused(client: Client, url: str, signup_form: SignupForm) -> None:
    response = post(client, url, signup_data(signup_form, name="Eve\x00\x07"))
    assert response.status_code == 400
    assert not Subscriber.objects.exists()


def _state(signup_form: SignupForm, state: str) -> None:
    """Put dana@example.com in ``state`` through the real operations."""
    if state == "new":
        return
    if state == "suppressed":
        Suppression.objects.create(brand=signup_form.brand, email_hash=email_hash("dana@example.com"), reason="team")
        return
    audiences = list(signup_form.audiences.order_by("name"))
    consent.request_subscription(form=signup_form, email="dana@example.com", audiences=audiences[:1], evidence=EVIDENCE)
    subscriber = Subscriber.objects.get()
    ConsumerEmail.objects.update(created_at=timezone.now() - timedelta(hours=1))
    if state == "pending":
        return
    consent.confirm(subscriber=subscriber, audience_ids=[audiences[0].pk], evidence=EVIDENCE)
    if state == "unsubscribed":
        Subscriber.objects.update(status=Subscriber.Status.UNSUBSCRIBED)
    elif state == "blocked":
        Subscriber.objects.update(status=Subscriber.Status.BLOCKED)


@pytest.mark.parametrize("state", ["new", "pending", "confirmed", "unsubscribed", "blocked", "suppressed"])
def test_the_response_is_the_same_whatever_the_address_state(
    client: Client, url: str, signup_form: SignupForm, state: str, django_capture_on_commit_callbacks: Any
) -> None:
    _state(signup_form, state)
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = post(client, url, signup_data(signup_form))
    assert response.status_code == 303
    assert response["Location"] == f"{url}thanks/"
    assert response.content == b""
    thanks = client.get(response["Location"])
    assert thanks.status_code == 200
    assert b"Check your inbox" in thanks.content
    expected_mail = {"new": 1, "pending": 1, "confirmed": 1, "unsubscribed": 1, "blocked": 0, "suppressed": 0}
    assert len(mail.outbox) == expected_mail[state]
    if state == "confirmed":
        # Already confirmed for "Offers": the email asks only about the new audience.
        assert "Weekly news" in mail.outbox[0].body
        assert "Offers" not in mail.outbox[0].body


def test_the_honeypot_gets_the_neutral_answer_and_nothing_happens(
    client: Client, url: str, signup_form: SignupForm
) -> None:
    response = post(client, url, signup_data(signup_form, website="http://spam.example"))
    assert response.status_code == 303
    assert response["Location"] == f"{url}thanks/"
    assert not Subscriber.objects.exists()


def test_a_form_filled_faster_than_a_person_can_is_ignored(
    client: Client, url: str, signup_form: SignupForm, settings: Any
) -> None:
    settings.SIGNUP_MIN_FILL_SECONDS = 3
    response = post(client, url, signup_data(signup_form, ts=render_stamp(signup_form)))
    assert response.status_code == 303
    assert not Subscriber.objects.exists()


def test_a_same_origin_post_without_a_render_stamp_is_ignored(
    client: Client, url: str, signup_form: SignupForm
) -> None:
    assert post(client, url, signup_data(signup_form, ts="")).status_code == 303
    assert post(client, url, signup_data(signup_form, ts="forged:stamp")).status_code == 303
    assert not Subscriber.objects.exists()


def test_the_per_ip_limit_refuses_quietly(client: Client, url: str, signup_form: SignupForm, settings: Any) -> None:
    settings.SIGNUP_LIMIT_PER_IP_PER_HOUR = 3
    for n in range(5):
        response = post(client, url, signup_data(signup_form, email=f"p{n}@example.com"))
        assert response.status_code == 303
    assert Subscriber.objects.count() == 3
    other_ip = post(client, url, signup_data(signup_form, email="q@example.com"), REMOTE_ADDR="198.51.100.9")
    assert other_ip.status_code == 303
    assert Subscriber.objects.count() == 4


def test_the_per_form_limit_refuses_quietly(client: Client, url: str, signup_form: SignupForm, settings: Any) -> None:
    settings.SIGNUP_LIMIT_PER_FORM_PER_MINUTE = 2
    for n in range(4):
        post(client, url, signup_data(signup_form, email=f"f{n}@example.com"), REMOTE_ADDR=f"198.51.100.{n}")
    assert Subscriber.objects.count() == 2


def test_x_forwarded_for_is_trusted_only_behind_configured_proxies(
    client: Client, url: str, signup_form: SignupForm, settings: Any
) -> None:
    headers = {"HTTP_X_FORWARDED_FOR": "192.0.2.44, 10.0.0.1"}
    post(client, url, signup_data(signup_form, email="a@example.com"), **headers)
    settings.TRUSTED_PROXY_COUNT = 1
    post(client, url, signup_data(signup_form, email="b@example.com"), **headers)
    ips = dict(ConsentEvent.objects.values_list("subscriber__email", "ip"))
    assert ips == {"a@example.com": "127.0.0.1", "b@example.com": "10.0.0.1"}


def test_an_allowed_origin_may_post_the_embed_snippet_without_a_stamp(
    client: Client, url: str, signup_form: SignupForm
) -> None:
    response = post(client, url, signup_data(signup_form, ts=""), HTTP_ORIGIN="https://www.acme.example")
    assert response.status_code == 303
    assert ConsentEvent.objects.get().source == ConsentEvent.Source.EMBED


def test_another_origin_is_refused(client: Client, url: str, signup_form: SignupForm) -> None:
    response = post(client, url, signup_data(signup_form), HTTP_ORIGIN="https://evil.example")
    assert response.status_code == 403
    assert b"evil.example" in response.content
    assert not Subscriber.objects.exists()


def test_the_iframe_variant_may_be_framed_only_by_allowed_origins(
    client: Client, url: str, signup_form: SignupForm
) -> None:
    response = client.get(f"{url}embed/")
    assert response.status_code == 200
    assert "X-Frame-Options" not in response
    assert response["Content-Security-Policy"] == "frame-ancestors 'self' https://www.acme.example"
    assert b'name="embed" value="iframe"' in response.content
    posted = post(client, url, signup_data(signup_form, embed="iframe"))
    assert posted["Location"] == f"{url}thanks/?embed=1"
    assert ConsentEvent.objects.get().source == ConsentEvent.Source.EMBED


def test_the_hosted_page_may_not_be_framed(client: Client, url: str) -> None:
    assert client.get(url)["X-Frame-Options"] == "DENY"


def test_the_embed_snippet_posts_to_the_hosted_endpoint_on_site_url(signup_form: SignupForm, settings: Any) -> None:
    from audiences.embed import embed_snippet, iframe_snippet

    settings.SITE_URL = "https://assent.example"
    snippet = embed_snippet(signup_form)
    assert 'action="https://assent.example/s/acme/newsletter/"' in snippet
    assert 'name="website"' in snippet
    assert 'name="wording_version" value="1"' in snippet
    assert "Yes, email me what I ticked." in snippet
    assert "checked" not in snippet
    assert 'src="https://assent.example/s/acme/newsletter/embed/"' in iframe_snippet(signup_form)


def test_a_post_from_the_host_the_page_was_served_on_is_same_origin(
    client: Client, url: str, signup_form: SignupForm
) -> None:
    # SITE_URL says 127.0.0.1, the person opened localhost: still our own form.
    response = post(
        client, url, signup_data(signup_form), HTTP_HOST="localhost:8000", HTTP_ORIGIN="http://localhost:8000"
    )
    assert response.status_code == 303
    assert ConsentEvent.objects.get().source == ConsentEvent.Source.FORM
