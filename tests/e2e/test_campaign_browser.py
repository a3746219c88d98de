"""An editor sends a campaign in a real browser: headless Chromium against the live
server, a Celery worker process on Redis, an aiosmtpd SMTP server and PostgreSQL.

They sign in, compose a campaign (watching the live count of eligible recipients),
preview it as one subscriber, send themselves a test, send it now and watch the
progress page until it says "Sent". Celery beat does not run here: the campaign is
marked sent by its own batch chain (``send_campaign_batch`` ends with
``delivery.finish_if_done``), so this test also shows that finishing does not wait
for the reconciler.

Each step is saved as a full-page screenshot in ``test-output/<test name>/``, with
the preview's frame and the received emails as screenshots of their own (a phone's
full-page screenshot leaves the inside of frames blank).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from playwright.sync_api import Page, expect

from audiences import consent, links
from audiences.models import Audience, AuditEvent, ConsentEvent, SignupForm, Subscriber
from campaigns import verp
from campaigns.models import Campaign, Delivery
from config.celery import app as celery_app
from tests.e2e.conftest import DESKTOP, PHONE
from tests.e2e.test_signup_browser import assert_page_basics, shot
from tests.mailserver import MailServer

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"  # the personas' password (tests/conftest.py)
EVIDENCE = consent.Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
SUBJECT = "Hello {{ subscriber.first_name }}"
HTML = """<h1>Hello {{ subscriber.first_name }}</h1>
<p>The first flush of the spring harvest is in, {{ subscriber.first_name }}.</p>
<p><a href="https://acme.example/spring">See the new teas</a></p>"""
# Seconds the SMTP server takes per message: long enough that the progress page first
# shows the campaign still going (and must poll to see it finish), short enough to be fast.
SMTP_DELAY = 0.6


@contextmanager
def eager() -> Iterator[None]:
    """Run tasks in this process for a while: the setup's confirmation emails go to
    Django's test outbox, not to the SMTP server the test reads."""
    celery_app.conf.task_always_eager = True
    try:
        yield
    finally:
        celery_app.conf.task_always_eager = False


def signed_up(form: SignupForm, audience: Audience, email: str, name: str, *, confirm: bool = True) -> Subscriber:
    """A person who signed up through the real consent operation and (unless told not to) confirmed."""
    with eager():
        outcome = consent.request_subscription(
            form=form, email=email, audiences=[audience], evidence=EVIDENCE, name=name
        )
        assert outcome == consent.Outcome.CONFIRMATION_QUEUED
        subscriber = Subscriber.objects.get(email=email)
        if confirm:
            outcome = consent.confirm(subscriber=subscriber, audience_ids=[audience.pk], evidence=EVIDENCE)
            assert outcome == consent.Outcome.CONFIRMED
    subscriber.refresh_from_db()
    return subscriber


def unsubscribes(url: str) -> Subscriber:
    """Whom the unsubscribe link ``url`` acts for (its signed token names them)."""
    token = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
    return links.read_token(links.Purpose.UNSUBSCRIBE, token).subscriber


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, f"no HTML part in {message['Subject']!r}"
    return str(part.get_content())


def shot_email(page: Page, message: EmailMessage, output_dir: Path, name: str) -> None:
    """The message's HTML part as a mail client would show it, in a tab of its own."""
    tab = page.context.new_page()
    tab.set_content(html_of(message))
    shot(tab, output_dir, name)
    tab.close()


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_an_editor_composes_previews_tests_and_sends_a_campaign(
    real_stack: Any,
    signup_form: SignupForm,
    news: Audience,
    offers: Audience,
    editor: User,
    mail_server: MailServer,
    page: Page,
    output_dir: Path,
) -> None:
    brand = signup_form.brand
    readers = [
        signed_up(signup_form, news, "pat@example.com", "Pat Doe"),
        signed_up(signup_form, news, "sam@example.com", "Sam Lee"),
        signed_up(signup_form, news, "kim@example.com", "Kim Ray"),
    ]
    sam = readers[1]
    # Someone who never confirmed: in the audience, but never counted and never sent to.
    signed_up(signup_form, news, "lou@example.com", "Lou Pending", confirm=False)
    EmailAddress.objects.create(user=editor, email=editor.email, verified=True, primary=True)

    # --- Sign in with email and password; the dashboard opens on the brand.
    page.goto(f"{real_stack.url}/accounts/login/")
    page.get_by_label("Email").fill(editor.email)
    page.get_by_label("Password").fill(PASSWORD)
    shot(page, output_dir, "01-login")
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{real_stack.url}/b/{brand.slug}/")
    page.get_by_role("navigation", name="Dashboard").get_by_role("link", name="Campaigns").click()
    expect(page.get_by_role("heading", level=1, name="Campaigns")).to_be_visible()
    page.get_by_role("link", name="New campaign").click()

    # --- An empty draft is refused, each problem at its field.
    expect(page.get_by_role("heading", level=1, name="New campaign")).to_be_visible()
    assert_page_basics(page)
    page.get_by_role("button", name="Save draft").click()
    expect(page.get_by_role("alert")).to_have_text("Please correct the marked fields. Nothing was saved.")
    expect(page).to_have_title(re.compile(r"^Error: New campaign"))
    assert_page_basics(page)
    shot(page, output_dir, "02-refused")
    assert not Campaign.objects.exists()

    # --- Compose. The count of eligible recipients follows the audiences ticked, before saving.
    count = page.locator("#live-count")
    expect(count).to_have_text("The number of eligible recipients shows once the draft is saved.")
    page.get_by_label("Name", exact=True).fill("Spring harvest")
    page.get_by_label("Subject").fill(SUBJECT)
    page.get_by_label("HTML body").fill(HTML)
    page.get_by_role("checkbox", name="Offers").check()
    expect(count).to_have_text("0 eligible recipients now (with your unsaved changes)")
    page.get_by_role("checkbox", name="Weekly news").check()
    page.get_by_role("checkbox", name="Offers").uncheck()
    expect(count).to_have_text("3 eligible recipients now (with your unsaved changes)")
    shot(page, output_dir, "03-compose")
    page.get_by_role("button", name="Save draft").click()

    expect(page.get_by_role("status")).to_have_text("Draft saved.")
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring harvest Draft")
    expect(count).to_have_text("3 eligible recipients now")
    expect(page.get_by_role("heading", name="Not ready to schedule yet")).to_have_count(0)
    assert_page_basics(page)
    shot(page, output_dir, "04-saved")
    campaign = Campaign.objects.get(brand=brand)
    # A browser sends a textarea's line breaks as CRLF (HTML's form encoding).
    assert (campaign.name, campaign.subject, campaign.html_body) == (
        "Spring harvest",
        SUBJECT,
        HTML.replace("\n", "\r\n"),
    )
    assert list(campaign.audiences.all()) == [news]

    # --- Preview as Sam: the sandboxed frame shows his message, the footer and his real links.
    page.get_by_role("link", name="Preview the saved draft").click()
    expect(page.get_by_role("heading", level=1, name="Preview of Spring harvest")).to_be_visible()
    page.get_by_label("Preview as a recent recipient").select_option(label="sam@example.com — Sam Lee")
    page.get_by_role("button", name="Show").click()
    as_sam = page.get_by_role("region", name="As sam@example.com would get it")
    expect(as_sam).to_be_visible()
    expect(as_sam.locator("dd").first).to_have_text("Hello Sam")  # the subject
    iframe = page.get_by_title("The HTML part of the message")
    expect(iframe).to_have_attribute("sandbox", "")  # no scripts, no access to the dashboard's origin
    mail = page.frame_locator("iframe.mail")
    expect(mail.get_by_role("heading", name="Hello Sam")).to_be_visible()
    expect(mail.get_by_text("The first flush of the spring harvest is in, Sam.")).to_be_visible()
    why = "You receive this email because you subscribed to Weekly news from Acme Tea."
    expect(mail.get_by_text(why)).to_be_visible()
    expect(mail.get_by_text(brand.postal_address)).to_be_visible()
    unsubscribe = mail.get_by_role("link", name="Unsubscribe")
    expect(unsubscribe).to_have_attribute("href", re.compile(rf"^{re.escape(real_stack.url)}/u/[^/]+/$"))
    assert unsubscribes(str(unsubscribe.get_attribute("href"))) == sam
    expect(as_sam.locator("pre")).to_contain_text("Hello Sam")  # the text part
    assert_page_basics(page)
    shot(page, output_dir, "05-preview")
    iframe.screenshot(path=output_dir / "05b-preview-html-part.png")

    # --- A test to the editor's own address: marked, with Sam's data, recorded nowhere as a delivery.
    expect(page.get_by_role("checkbox", name=f"{editor.email} (you)")).to_be_checked()
    page.get_by_role("button", name="Send test").click()
    expect(page.get_by_role("status")).to_have_text(f"Test sent to {editor.email}.")
    expect(as_sam).to_be_visible()  # still previewing Sam
    shot(page, output_dir, "06-test-sent")
    [test] = mail_server.wait_for(1)
    assert test["To"] == editor.email
    assert test["Subject"] == "[Test] Hello Sam"
    assert test["X-Assent-Test"] == "yes"
    assert test["List-Unsubscribe"] is None
    assert "The first flush of the spring harvest is in, Sam." in html_of(test)
    assert not Delivery.objects.exists()
    assert AuditEvent.objects.filter(action="campaign.test_sent", user=editor).count() == 1
    shot_email(page, test, output_dir, "06b-test-email")

    # --- Send now, from the campaign's page.
    mail_server.clear()
    mail_server.delay = SMTP_DELAY
    page.get_by_role("link", name="Back to the campaign").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Spring harvest Draft")
    expect(page.get_by_role("region", name="Recipients").locator("dd.count")).to_have_text("3")
    page.get_by_role("radio", name="Send now").check()
    assert_page_basics(page)
    shot(page, output_dir, "07-schedule")
    page.get_by_role("button", name="Schedule", exact=True).click()

    # --- Progress: live at first; then, by its own polling (the test never reloads), sent with the outcome.
    expect(page.get_by_role("status")).to_have_text("Sending starts now.")
    badge = page.locator("#status-badge")
    expect(badge).to_have_text(re.compile(r"^(Scheduled|Sending)$"))
    expect(page.get_by_role("button", name="Cancel campaign")).to_be_visible()
    shot(page, output_dir, "08-progress")
    expect(badge).to_have_text("Sent", timeout=30_000)
    progress = page.get_by_role("region", name="Progress")
    expect(page.locator("#progress-summary")).to_have_text("Sent: 3 of 3 handled (100%), nothing left.")
    expect(progress.locator("[data-key=sent]")).to_have_text("3")
    expect(progress.locator("[data-key=skipped]")).to_have_text("0")
    expect(progress.locator("[data-key=failed]")).to_have_text("0")
    expect(progress.locator("[data-key=remaining]")).to_have_text("0")
    expect(page.locator("#progress-bar")).to_have_attribute("value", "100")
    expect(page.get_by_role("button", name="Cancel campaign")).to_have_count(0)
    outcome = page.get_by_role("region", name="Outcome")
    expect(outcome.get_by_role("img", name="Deliveries per outcome")).to_be_visible()
    expect(outcome.locator("svg > text")).to_have_text(["Sent", "3"])  # one bar: its label and count
    expect(outcome.get_by_text("Every planned message was sent.")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "09-sent")

    # --- The list says so too.
    page.get_by_role("link", name="Campaigns", exact=True).click()
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name="Spring harvest"))
    expect(row.get_by_role("cell")).to_have_text(["Sent", "Weekly news", re.compile(r"^Sent "), "3"])
    assert_page_basics(page)
    shot(page, output_dir, "10-list")

    # --- What the SMTP server got: one message per confirmed reader, each with one-click unsubscribe.
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert campaign.finished_at is not None
    received = mail_server.received()
    assert received == Counter({r.email: 1 for r in readers}), received
    by_delivery = {m["X-Assent-Delivery"]: m for m in mail_server.messages}
    deliveries = list(Delivery.objects.filter(campaign=campaign).select_related("subscriber"))
    assert {d.subscriber.email: d.status for d in deliveries} == {r.email: Delivery.Status.SENT for r in readers}
    for d in deliveries:
        sent = by_delivery[verp.token(d.pk)]
        first_name = d.subscriber.name.split()[0]
        assert sent["Subject"] == f"Hello {first_name}"
        assert sent["Message-ID"] == d.message_id
        assert sent["X-Assent-Test"] is None
        assert sent.get_all("List-Unsubscribe-Post") == ["List-Unsubscribe=One-Click"]
        [target] = [str(value).strip() for value in sent.get_all("List-Unsubscribe") or []]
        assert re.fullmatch(rf"<{re.escape(real_stack.url)}/u/[^/<>]+/>", target), target
        assert unsubscribes(target[1:-1]) == d.subscriber
        html = html_of(sent)
        assert f"The first flush of the spring harvest is in, {first_name}." in html
        assert brand.postal_address in html
        assert target[1:-1] in html  # the footer's link is the header's
    shot_email(
        page, by_delivery[verp.token(next(d.pk for d in deliveries if d.subscriber == sam))], output_dir, "11-received"
    )
