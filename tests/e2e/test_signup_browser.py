"""A person signs up and confirms in a real browser: headless Chromium against the
live server, a Celery worker process on Redis, an aiosmtpd SMTP server and PostgreSQL.

Each step is saved as a full-page screenshot in ``test-output/<test name>/``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from audiences.models import Audience, ConsentEvent, SignupForm, Subscriber, Subscription
from tests.e2e.conftest import DESKTOP, PHONE
from tests.mailserver import MailServer

pytestmark = pytest.mark.e2e

MIN_FILL_SECONDS = 1.1  # real_stack sets SIGNUP_MIN_FILL_SECONDS=1; a person takes at least that long


def shot(page: Page, output_dir: Path, name: str) -> None:
    page.screenshot(path=output_dir / f"{name}.png", full_page=True)


def assert_fits_the_screen(page: Page) -> None:
    """Nothing sticks out sideways: no horizontal scrolling, on a phone either."""
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{page.url} scrolls sideways by {overflow}px"


def assert_page_basics(page: Page) -> None:
    """A language, one main landmark, one top-level heading."""
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.get_by_role("main")).to_have_count(1)
    expect(page.get_by_role("heading", level=1)).to_have_count(1)
    assert_fits_the_screen(page)


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_person_signs_up_and_confirms_in_a_browser(
    real_stack: Any,
    signup_form: SignupForm,
    news: Audience,
    offers: Audience,
    mail_server: MailServer,
    page: Page,
    output_dir: Path,
) -> None:
    # The hosted signup page.
    page.goto(f"{real_stack.url}/s/{signup_form.brand.slug}/{signup_form.slug}/")
    rendered = time.monotonic()
    expect(page.get_by_role("heading", level=1, name="Join Acme Tea")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "01-signup")

    page.get_by_label("Email address").fill("Erin@Example.COM")
    page.get_by_label("Name").fill("Erin")
    page.get_by_role("checkbox", name="Weekly news").check()
    expect(page.get_by_role("checkbox", name="Offers")).not_to_be_checked()
    shot(page, output_dir, "02-signup-filled")
    page.wait_for_timeout(max(0.0, MIN_FILL_SECONDS - (time.monotonic() - rendered)) * 1000)
    page.get_by_role("button", name="Subscribe").click()

    # "Check your inbox": the answer is the same whatever the address's state.
    expect(page.get_by_role("heading", level=1, name="Check your inbox")).to_be_visible()
    assert page.url.endswith(f"/s/{signup_form.brand.slug}/{signup_form.slug}/thanks/")
    assert_page_basics(page)
    shot(page, output_dir, "03-thanks")
    user_agent = page.evaluate("navigator.userAgent")

    # The confirmation email, sent by the worker process over SMTP.
    [message] = mail_server.wait_for(1)
    assert message["To"] == "Erin <erin@example.com>"
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None, "the confirmation email has no HTML part"
    page.set_content(html_part.get_content())
    expect(page.get_by_text("Weekly news")).to_be_visible()
    expect(page.get_by_text("Offers")).to_have_count(0)
    shot(page, output_dir, "04-email")
    subscriber = Subscriber.objects.get(email="erin@example.com")
    assert subscriber.status == Subscriber.Status.PENDING

    # The link opens a page with one button; opening it changes nothing.
    page.get_by_role("link", name="Confirm my subscription").click()
    confirm_button = page.get_by_role("button", name="Confirm", exact=True)
    expect(confirm_button).to_be_visible()
    expect(page.get_by_role("main").get_by_role("listitem")).to_have_text(["Weekly news — Every Friday."])
    assert_page_basics(page)
    shot(page, output_dir, "05-confirm")
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.PENDING, "opening the link must not confirm"

    confirm_button.click()
    expect(page.get_by_role("heading", level=1, name="You're subscribed")).to_be_visible()
    expect(page.get_by_role("main").get_by_role("listitem")).to_have_text(["Weekly news"])
    assert_page_basics(page)
    shot(page, output_dir, "06-confirmed")

    # What the database holds: only the ticked audience, with the browser's evidence.
    subscriber.refresh_from_db()
    assert subscriber.status == Subscriber.Status.CONFIRMED
    assert subscriber.name == "Erin"
    assert {s.audience_id: s.status for s in subscriber.subscriptions.all()} == {news.pk: Subscription.Status.ACTIVE}
    assert not Subscription.objects.filter(audience=offers).exists()
    requested, confirmed = subscriber.consent_events.order_by("created_at", "pk")
    assert requested.kind == ConsentEvent.Kind.REQUESTED
    assert requested.source == ConsentEvent.Source.FORM
    assert requested.signup_form == signup_form
    assert requested.wording_text == signup_form.current_wording().text
    assert [a["name"] for a in requested.audiences] == ["Weekly news"]
    assert confirmed.kind == ConsentEvent.Kind.CONFIRMED
    assert confirmed.source == ConsentEvent.Source.EMAIL_LINK
    for event in (requested, confirmed):
        assert event.ip == "127.0.0.1"
        assert event.user_agent == user_agent
        assert "Chrome/" in event.user_agent


def test_the_signup_form_works_from_the_keyboard(
    real_stack: Any, signup_form: SignupForm, news: Audience, page: Page, output_dir: Path
) -> None:
    """Tab reaches every control in reading order (never the honeypot), focus is always
    visible, and the form can be filled and sent without a mouse."""
    page.goto(f"{real_stack.url}/s/{signup_form.brand.slug}/{signup_form.slug}/")
    rendered = time.monotonic()
    main = page.get_by_role("main")
    # Each Tab stop, and what a keyboard user then does there.
    stops = [
        ("skip link", page.get_by_role("link", name="Skip to content"), "Enter"),
        ("email", page.get_by_label("Email address"), "erin@example.com"),
        ("name", page.get_by_label("Name"), "Erin"),
        ("Offers", page.get_by_role("checkbox", name="Offers"), None),
        ("Weekly news", page.get_by_role("checkbox", name="Weekly news"), "Space"),
        ("privacy link", main.get_by_role("link", name="Privacy policy"), None),
        ("Subscribe", page.get_by_role("button", name="Subscribe"), None),
    ]
    for number, (what, control, keys) in enumerate(stops, start=1):
        page.keyboard.press("Tab")
        expect(control, f"Tab number {number} should reach {what}").to_be_focused()
        outline = control.evaluate(
            "el => [getComputedStyle(el).outlineStyle, parseFloat(getComputedStyle(el).outlineWidth)]"
        )
        assert outline[0] != "none", f"focus on {what} is not visible: no outline"
        assert outline[1] >= 2, f"focus on {what} is hard to see: outline {outline[1]}px"
        shot(page, output_dir, f"{number:02d}-{what.replace(' ', '-')}")
        if keys in ("Enter", "Space"):
            page.keyboard.press(keys)
        elif keys:
            page.keyboard.type(keys)
        if what == "skip link":
            expect(main, "the skip link should move focus to the main content").to_be_focused()

    expect(page.get_by_role("checkbox", name="Weekly news")).to_be_checked()
    expect(page.get_by_role("checkbox", name="Offers")).not_to_be_checked()
    page.wait_for_timeout(max(0.0, MIN_FILL_SECONDS - (time.monotonic() - rendered)) * 1000)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1, name="Check your inbox")).to_be_visible()
    subscriber = Subscriber.objects.get(email="erin@example.com")
    assert list(subscriber.subscriptions.values_list("audience", flat=True)) == [news.pk]


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_a_broken_confirmation_link_explains_itself(
    live_server: Any, transactional_db: None, page: Page, output_dir: Path
) -> None:
    response = page.goto(f"{live_server.url}/c/garbage/")
    assert response is not None
    assert response.status == 400
    expect(page.get_by_role("heading", level=1, name="This link is not valid")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "link-invalid")


def test_mistakes_are_explained_next_to_the_fields(
    live_server: Any, settings: Any, signup_form: SignupForm, page: Page, output_dir: Path
) -> None:
    """A refused form says so in the title and an alert, and ties each message to its field."""
    page.goto(f"{live_server.url}/s/{signup_form.brand.slug}/{signup_form.slug}/")
    page.get_by_label("Email address").fill("erin at example")
    page.get_by_label("Name").fill("Erin")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.get_by_role("button", name="Subscribe").click()
    assert posted.value.status == 400

    expect(page).to_have_title("Error: Join Acme Tea · Acme Tea")
    expect(page.get_by_role("alert")).to_have_text("Please correct the marked fields.")
    email = page.get_by_label("Email address")
    expect(email).to_have_value("erin at example")
    expect(email).to_have_attribute("aria-invalid", "true")
    expect(email).to_have_accessible_description("Enter a valid email address.")
    expect(page.get_by_label("Name")).to_have_value("Erin")
    expect(page.get_by_role("group", name="What would you like to receive?")).to_have_accessible_description(
        "Choose at least one."
    )
    expect(page.get_by_role("checkbox", name="Weekly news", exact=True)).to_have_accessible_description("Every Friday.")
    assert_page_basics(page)
    shot(page, output_dir, "errors")
