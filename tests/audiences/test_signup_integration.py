"""Signup to confirmation over real parts: HTTP to the live server, a Celery worker
process on Redis, an aiosmtpd SMTP server and PostgreSQL."""

from __future__ import annotations

import http.cookiejar
import re
import time
import urllib.parse
import urllib.request
from typing import Any

import pytest

from audiences.models import ConsentEvent, SignupForm, Subscriber, Subscription

pytestmark = pytest.mark.integration


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match, f"no {name} field in the page"
    return match.group(1)


def test_a_person_signs_up_and_confirms_through_the_real_stack(
    real_stack: Any, signup_form: SignupForm, mail_server: Any
) -> None:
    browser = _opener()
    url = f"{real_stack.url}/s/{signup_form.brand.slug}/{signup_form.slug}/"
    page = browser.open(url).read().decode()
    data = {
        "email": "Erin@Example.COM",
        "name": "Erin",
        "audiences": [str(a.pk) for a in signup_form.audiences.all()],
        "ts": _field(page, "ts"),
        "wording_version": _field(page, "wording_version"),
        "website": "",
    }

    time.sleep(1.1)  # the minimum fill time is 1 s in these tests
    response = browser.open(url, urllib.parse.urlencode(data, doseq=True).encode())
    assert response.geturl().endswith("/thanks/")

    [message] = mail_server.wait_for(1)
    assert message["To"] == "Erin <erin@example.com>"
    assert "Acme Tea" in message["Subject"]
    text = message.get_body(preferencelist=("plain",)).get_content()
    match = re.search(r"(http://\S+/c/\S+/)", text)
    assert match, text
    confirm_url = match.group(1)

    subscriber = Subscriber.objects.get(email="erin@example.com")
    assert subscriber.status == Subscriber.Status.PENDING

    confirm_page = browser.open(confirm_url).read().decode()
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.PENDING, "GET must not confirm"

    csrf = _field(confirm_page, "csrfmiddlewaretoken")
    request = urllib.request.Request(
        confirm_url, urllib.parse.urlencode({"csrfmiddlewaretoken": csrf}).encode(), headers={"Referer": confirm_url}
    )
    done = browser.open(request).read().decode()
    assert "subscribed" in done

    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.CONFIRMED
    assert set(subscriber.subscriptions.values_list("status", flat=True)) == {Subscription.Status.ACTIVE}
    requested, confirmed = subscriber.consent_events.order_by("created_at")
    assert requested.kind == ConsentEvent.Kind.REQUESTED
    assert requested.ip == "127.0.0.1"
    assert requested.wording_text == signup_form.current_wording().text
    assert requested.signup_form == signup_form
    assert {a["name"] for a in requested.audiences} == {"Weekly news", "Offers"}
    assert confirmed.kind == ConsentEvent.Kind.CONFIRMED
    assert confirmed.ip == "127.0.0.1"
    assert confirmed.user_agent.startswith("Python-urllib")


def test_the_worker_retries_a_451_from_the_mail_server_and_then_delivers(
    real_stack: Any, signup_form: SignupForm, mail_server: Any, django_capture_on_commit_callbacks: Any
) -> None:
    from audiences import consent
    from audiences.models import ConsumerEmail

    mail_server.replies.append("451 4.3.0 Mailbox busy, try again later")
    consent.request_subscription(
        form=signup_form,
        email="frank@example.com",
        audiences=list(signup_form.audiences.all()),
        evidence=consent.Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM),
    )
    [message] = mail_server.wait_for(1, timeout=30)
    assert message["To"] == "frank@example.com"
    assert mail_server.replies == []  # the 451 was answered first
    request = ConsumerEmail.objects.get()
    for _ in range(50):
        request.refresh_from_db()
        if request.status == ConsumerEmail.Status.SENT:
            break
        time.sleep(0.1)
    assert request.status == ConsumerEmail.Status.SENT
