"""A confirmed person manages their subscriptions in a real browser: headless Chromium
against the live server, a Celery worker process on Redis, an aiosmtpd SMTP server
and PostgreSQL.

They ask for a fresh manage link, open it from the email, switch an audience off,
pause, download their data and unsubscribe from everything; or they use the
unsubscribe link of a message's List-Unsubscribe header and then turn a list back on.
Each step is saved as a full-page screenshot in ``test-output/<test name>/``.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone
from playwright.sync_api import Locator, Page, expect

from audiences import consent
from audiences.models import Audience, ConsentEvent, ConsumerEmail, SignupForm, Subscriber, Subscription
from tests.conftest import db_snapshot
from tests.e2e.conftest import DESKTOP, PHONE
from tests.e2e.test_signup_browser import assert_page_basics, shot
from tests.mailserver import MailServer

pytestmark = pytest.mark.e2e

SETUP_AGENT = "set-up by the test"  # the user agent of the events written before the browser takes over


def delivered(mail_server: MailServer, count: int, timeout: float = 15) -> list[EmailMessage]:
    """The first ``count`` messages, once the SMTP server has them and the worker has marked them sent.

    The worker records "sent" just after the server accepted the message: wait for that
    too, or a later "the database is unchanged" check would race the worker.
    """
    messages = mail_server.wait_for(count)
    deadline = time.monotonic() + timeout
    while ConsumerEmail.objects.exclude(status=ConsumerEmail.Status.SENT).exists():
        assert time.monotonic() < deadline, list(ConsumerEmail.objects.values("kind", "status", "error"))
        time.sleep(0.05)
    return messages


def confirmed_subscriber(
    form: SignupForm, audiences: list[Audience], mail_server: MailServer
) -> tuple[Subscriber, EmailMessage]:
    """Dana, signed up to ``audiences`` and confirmed through the real operations.

    Returns her and the confirmation email the worker sent (waited for before
    confirming, or the worker would find nothing pending and skip it).
    """
    evidence = consent.Evidence(
        actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM, ip="198.51.100.23", user_agent=SETUP_AGENT
    )
    outcome = consent.request_subscription(
        form=form, email="dana@example.com", audiences=audiences, evidence=evidence, name="Dana"
    )
    assert outcome == consent.Outcome.CONFIRMATION_QUEUED
    [confirmation] = delivered(mail_server, 1)
    subscriber = Subscriber.objects.get(email="dana@example.com")
    clicked = consent.Evidence(
        actor=ConsentEvent.Actor.CONSUMER,
        source=ConsentEvent.Source.EMAIL_LINK,
        ip="198.51.100.23",
        user_agent=SETUP_AGENT,
    )
    outcome = consent.confirm(subscriber=subscriber, audience_ids=[a.pk for a in audiences], evidence=clicked)
    assert outcome == consent.Outcome.CONFIRMED
    subscriber.refresh_from_db()
    return subscriber, confirmation


def statuses(subscriber: Subscriber) -> dict[str, str]:
    return dict(subscriber.subscriptions.values_list("audience__name", "status"))


def eligible_for(subscriber: Subscriber, *audiences: Audience) -> list[str]:
    """The audiences a message about which would go to the person now, by THE eligibility queryset."""
    eligible = Subscriber.objects.eligible
    return [a.name for a in audiences if eligible(audience_ids=[a.pk]).filter(pk=subscriber.pk).exists()]


def events_since(subscriber: Subscriber, seen: int) -> list[ConsentEvent]:
    return list(subscriber.consent_events.order_by("created_at", "pk")[seen:])


def assert_from_the_browser(event: ConsentEvent, source: ConsentEvent.Source, user_agent: str) -> None:
    assert event.actor == ConsentEvent.Actor.CONSUMER
    assert event.source == source
    assert event.ip == "127.0.0.1"
    assert event.user_agent == user_agent
    assert "Chrome/" in event.user_agent


def saved_notice(page: Page) -> Locator:
    return page.get_by_role("status").filter(has_text="Your changes are saved.")


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_person_manages_their_subscriptions_from_a_fresh_link(
    real_stack: Any,
    signup_form: SignupForm,
    news: Audience,
    offers: Audience,
    mail_server: MailServer,
    page: Page,
    output_dir: Path,
) -> None:
    dana, _ = confirmed_subscriber(signup_form, [news, offers], mail_server)
    assert statuses(dana) == {"Weekly news": "active", "Offers": "active"}
    assert eligible_for(dana, news, offers) == ["Weekly news", "Offers"]
    seen = dana.consent_events.count()

    # "Manage my subscription": the person asks for a fresh link.
    page.goto(f"{real_stack.url}/m/{dana.brand.slug}/")
    expect(page.get_by_role("heading", level=1, name="Manage my subscription")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "01-manage-request")
    page.get_by_label("Email address").fill("Dana@Example.com")
    page.get_by_role("button", name="Email me a link").click()
    expect(page.get_by_role("heading", level=1, name="Check your inbox")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "02-manage-sent")
    user_agent = page.evaluate("navigator.userAgent")

    # The manage-link email, sent by the worker process over SMTP.
    _, message = delivered(mail_server, 2)
    assert message["To"] == "Dana <dana@example.com>"
    assert message["Subject"] == "Your link to manage your subscriptions to Acme Tea"
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None, "the manage-link email has no HTML part"
    page.set_content(html_part.get_content())
    expect(page.get_by_role("heading", level=1, name="Manage your subscriptions")).to_be_visible()
    shot(page, output_dir, "03-email")

    # The preference centre: opening it changes nothing.
    before = db_snapshot()
    page.get_by_role("link", name="Manage your subscriptions").click()
    expect(page.get_by_role("heading", level=1, name="Your subscriptions")).to_be_visible()
    main = page.get_by_role("main")
    expect(main).to_contain_text("What Acme Tea sends to dana@example.com.")
    lists = page.get_by_role("group", name="Lists")
    weekly = lists.get_by_role("checkbox", name="Weekly news", exact=True)
    offers_box = lists.get_by_role("checkbox", name="Offers", exact=True)
    expect(weekly).to_be_checked()
    expect(weekly).to_have_accessible_description("Every Friday.")
    expect(offers_box).to_be_checked()
    expect(offers_box).to_have_accessible_description("Now and then.")
    expect(page.get_by_role("radio", name="As published")).to_be_checked()
    expect(page.get_by_label("Name")).to_have_value("Dana")
    assert_page_basics(page)
    shot(page, output_dir, "04-centre")
    assert db_snapshot() == before, "opening the preference centre must change nothing"

    # Switch one audience off.
    offers_box.uncheck()
    page.get_by_role("button", name="Save preferences").click()
    expect(page).to_have_url(re.compile(r"\?saved=save$"))  # the answer to this POST, not the page before
    expect(saved_notice(page)).to_be_visible()
    expect(offers_box).not_to_be_checked()
    expect(weekly).to_be_checked()
    assert_page_basics(page)
    shot(page, output_dir, "05-saved")
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.CONFIRMED
    assert statuses(dana) == {"Weekly news": "active", "Offers": "inactive"}
    assert eligible_for(dana, news, offers) == ["Weekly news"]
    [left] = events_since(dana, seen)  # nothing else changed, so nothing else was recorded
    assert left.kind == ConsentEvent.Kind.UNSUBSCRIBED
    assert [a["name"] for a in left.audiences] == ["Offers"]
    assert left.details == {"scope": "audiences"}
    assert_from_the_browser(left, ConsentEvent.Source.PREFERENCE_CENTRE, user_agent)
    seen += 1

    # Pause all emails for 30 days.
    page.get_by_role("button", name="Pause all emails for 30 days").click()
    expect(page).to_have_url(re.compile(r"\?saved=pause30$"))
    expect(main.get_by_text("All emails are paused until")).to_be_visible()
    expect(saved_notice(page)).to_be_visible()
    expect(page.get_by_role("button", name="Resume emails now")).to_be_visible()
    expect(page.get_by_role("button", name="Pause all emails for 30 days")).to_have_count(0)
    assert_page_basics(page)
    shot(page, output_dir, "06-paused")
    dana.refresh_from_db()
    assert dana.paused_until is not None
    assert abs(dana.paused_until - (timezone.now() + timedelta(days=30))) < timedelta(minutes=5)
    assert dana.status == Subscriber.Status.CONFIRMED
    assert eligible_for(dana, news, offers) == []
    [paused] = events_since(dana, seen)
    assert paused.kind == ConsentEvent.Kind.PAUSED
    assert paused.details["days"] == 30
    assert_from_the_browser(paused, ConsentEvent.Source.PREFERENCE_CENTRE, user_agent)
    seen += 1

    # Download my data: a JSON file, and the page stays where it is.
    before = db_snapshot()
    with page.expect_download() as download_info:
        page.get_by_role("button", name="Download my data").click()
    download = download_info.value
    assert download.suggested_filename == "acme-my-data.json"
    download_path = download.path()
    assert download_path is not None
    data = json.loads(Path(download_path).read_text(encoding="utf-8"))
    (output_dir / "07-my-data.json").write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    assert data["profile"]["email"] == "dana@example.com"
    assert data["profile"]["name"] == "Dana"
    assert data["profile"]["paused_until"] == dana.paused_until.isoformat()
    assert {s["audience"]: s["status"] for s in data["subscriptions"]} == {
        "Weekly news": "active",
        "Offers": "inactive",
    }
    history = data["consent_history"]
    assert [e["kind"] for e in history] == ["requested", "confirmed", "unsubscribed", "paused"]
    assert history[0]["wording"] == signup_form.current_wording().text
    assert [e["user_agent"] for e in history] == [SETUP_AGENT, SETUP_AGENT, user_agent, user_agent]
    assert db_snapshot() == before, "downloading the data must change nothing"
    expect(page.get_by_role("heading", level=1, name="Your subscriptions")).to_be_visible()

    # Unsubscribe from everything.
    page.get_by_role("button", name="Unsubscribe from everything").click()
    expect(page).to_have_url(re.compile(r"\?saved=unsubscribe_all$"))
    expect(page.get_by_role("status").filter(has_text="You are unsubscribed from everything.")).to_be_visible()
    expect(weekly).not_to_be_checked()
    expect(offers_box).not_to_be_checked()
    assert_page_basics(page)
    shot(page, output_dir, "08-unsubscribed")
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.UNSUBSCRIBED
    assert dana.unsubscribed_at is not None
    assert statuses(dana) == {"Weekly news": "inactive", "Offers": "inactive"}
    assert eligible_for(dana, news, offers) == []
    [gone] = events_since(dana, seen)
    assert gone.kind == ConsentEvent.Kind.UNSUBSCRIBED
    assert [a["name"] for a in gone.audiences] == ["Weekly news"]
    assert gone.details == {"scope": "all"}
    assert_from_the_browser(gone, ConsentEvent.Source.PREFERENCE_CENTRE, user_agent)


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_list_unsubscribe_link_unsubscribes_and_a_list_can_be_turned_back_on(
    real_stack: Any,
    signup_form: SignupForm,
    news: Audience,
    offers: Audience,
    page: Page,
    mail_server: MailServer,
    output_dir: Path,
) -> None:
    dana, confirmation = confirmed_subscriber(signup_form, [news, offers], mail_server)
    seen = dana.consent_events.count()
    header = str(confirmation["List-Unsubscribe"]).strip()  # a long header is folded onto its next line
    assert re.fullmatch(rf"<{re.escape(real_stack.url)}/u/[^>\s]+/>", header), header
    assert confirmation["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # Opening the link (as a mail scanner would) shows a page and changes nothing.
    before = db_snapshot()
    page.goto(header[1:-1])
    expect(page.get_by_role("heading", level=1, name="Unsubscribe")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text("Stop emails to dana@example.com:")
    expect(page.get_by_role("button", name="Unsubscribe from these lists")).to_be_visible()
    expect(page.get_by_role("main").get_by_role("listitem")).to_have_text(["Offers", "Weekly news"])
    everything = page.get_by_role("button", name="Unsubscribe from everything from Acme Tea")
    expect(everything).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "01-unsubscribe")
    assert db_snapshot() == before, "opening the unsubscribe link must change nothing"
    user_agent = page.evaluate("navigator.userAgent")

    everything.click()
    expect(page.get_by_role("heading", level=1, name="You are unsubscribed")).to_be_visible()
    expect(page.get_by_role("main")).to_contain_text("Acme Tea will send you no more emails.")
    manage = page.get_by_role("link", name="Manage your subscriptions")
    expect(manage).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "02-unsubscribed")
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.UNSUBSCRIBED
    assert statuses(dana) == {"Weekly news": "inactive", "Offers": "inactive"}
    assert eligible_for(dana, news, offers) == []
    [gone] = events_since(dana, seen)
    assert gone.kind == ConsentEvent.Kind.UNSUBSCRIBED
    assert sorted(a["name"] for a in gone.audiences) == ["Offers", "Weekly news"]
    assert gone.details == {"scope": "all"}
    assert_from_the_browser(gone, ConsentEvent.Source.EMAIL_LINK, user_agent)
    seen += 1

    # Changed their mind: the preference centre, with nothing ticked.
    manage.click()
    expect(page.get_by_role("heading", level=1, name="Your subscriptions")).to_be_visible()
    weekly = page.get_by_role("checkbox", name="Weekly news", exact=True)
    offers_box = page.get_by_role("checkbox", name="Offers", exact=True)
    expect(weekly).not_to_be_checked()
    expect(offers_box).not_to_be_checked()
    assert_page_basics(page)
    shot(page, output_dir, "03-centre")

    weekly.check()
    page.get_by_role("button", name="Save preferences").click()
    expect(page).to_have_url(re.compile(r"\?saved=save$"))
    expect(saved_notice(page)).to_be_visible()
    expect(weekly).to_be_checked()
    expect(offers_box).not_to_be_checked()
    assert_page_basics(page)
    shot(page, output_dir, "04-resubscribed")
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.CONFIRMED
    assert statuses(dana) == {"Weekly news": "active", "Offers": "inactive"}
    assert eligible_for(dana, news, offers) == ["Weekly news"]
    [back] = events_since(dana, seen)
    assert back.kind == ConsentEvent.Kind.RESUBSCRIBED
    assert [a["name"] for a in back.audiences] == ["Weekly news"]
    assert_from_the_browser(back, ConsentEvent.Source.PREFERENCE_CENTRE, user_agent)
    assert Subscription.objects.get(subscriber=dana, audience=news).ended_at is None
