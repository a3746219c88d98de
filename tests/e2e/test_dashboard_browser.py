"""A team owner works through the dashboard in a real browser: headless Chromium against
the live server, a Celery worker process on Redis, and PostgreSQL.

She signs in with her email address and password, creates an audience and a signup
form, copies the form's embed code, imports a small CSV file (the worker runs it while
the progress page watches), finds an imported person and reads their consent evidence.
Each step is saved as a full-page screenshot in ``test-output/<test name>/``.
"""

from __future__ import annotations

import csv
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.utils.html import escape
from playwright.sync_api import BrowserContext, Locator, Page, expect

from audiences.models import (
    Audience,
    AuditEvent,
    Brand,
    ConsentEvent,
    ImportIssue,
    ImportJob,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)
from tests.e2e.conftest import DESKTOP, PHONE
from tests.e2e.test_signup_browser import assert_page_basics, shot

pytestmark = pytest.mark.e2e

PASSWORD = "correct horse battery"  # the personas' password (tests/conftest.py)
FORM_WORDING = "Yes, send me Acme Tea's weekly news. I can unsubscribe at any time."
SOURCE = "Newsletter box at checkout on shop.acme.example, 2021 to 2024"
ATTESTED_ON = date(2024, 3, 1)
ATTESTATION = "Tick to get our weekly tea news by email. You can unsubscribe at any time."
# Five rows: three to import, one that is not an address, one the brand must never add back.
CSV_TEXT = """Email,Full name,Customer since
erin@example.com,Erin Example,2021
frank@example.com,Frank,2022
not-an-address,Broken,2020
bounced@example.com,Bounce,2019
gina@example.com,Gina,2023
"""
IMPORTED = ["erin@example.com", "frank@example.com", "gina@example.com"]


@pytest.fixture
def member(owner: User) -> User:
    """Alice, owner of Acme Tea, with a verified address: she can sign in with her password."""
    EmailAddress.objects.create(user=owner, email=owner.email, verified=True, primary=True)
    return owner


@pytest.fixture
def bounced(brand: Brand) -> Suppression:
    """An address that bounced for good: an import must not add it back."""
    return Suppression.objects.create(
        brand=brand, email_hash=email_hash("bounced@example.com"), reason=Suppression.Reason.HARD_BOUNCE
    )


@pytest.fixture
def shared_import_dir(real_stack: Any, settings: Any) -> Path:
    """Uploads go where the worker process reads them (``real_stack`` sets ``IMPORT_DIR``)."""
    return Path(settings.IMPORT_DIR)


@pytest.fixture
def clipboard(context: BrowserContext, real_stack: Any) -> None:
    """Let the dashboard's Copy buttons write to the clipboard, and the test read it back."""
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=real_stack.url)


def nav(page: Page, name: str) -> Locator:
    return page.get_by_role("navigation", name="Dashboard").get_by_role("link", name=name, exact=True)


def success(page: Page) -> Locator:
    return page.get_by_role("status").filter(has=page.locator("li.success"))


@pytest.mark.parametrize("screen", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_an_owner_creates_a_form_imports_a_file_and_reads_the_evidence(
    real_stack: Any,
    brand: Brand,
    member: User,
    bounced: Suppression,
    shared_import_dir: Path,
    clipboard: None,
    page: Page,
    output_dir: Path,
) -> None:
    url = real_stack.url

    # Sign in with email and password: the one brand's overview opens.
    page.goto(f"{url}/accounts/login/")
    page.get_by_label("Email").fill("Alice@Acme.example")
    page.get_by_label("Password").fill(PASSWORD)
    shot(page, output_dir, "01-sign-in")
    page.get_by_role("button", name="Sign In", exact=True).click()
    expect(page).to_have_url(f"{url}/b/{brand.slug}/")
    expect(page.get_by_role("heading", level=1, name="Acme Tea")).to_be_visible()
    expect(nav(page, "Overview")).to_have_attribute("aria-current", "page")
    assert_page_basics(page)
    shot(page, output_dir, "02-overview")

    # A new audience.
    nav(page, "Audiences").click()
    expect(page.get_by_role("heading", level=1, name="Audiences")).to_be_visible()
    page.get_by_role("link", name="New audience").click()
    page.get_by_label("Public name").fill("Weekly news")
    page.get_by_label("Public description").fill("Every Friday.")
    expect(page.get_by_label("Public", exact=True)).to_be_checked()
    assert_page_basics(page)
    shot(page, output_dir, "03-new-audience")
    page.get_by_role("button", name="Create audience").click()
    expect(success(page)).to_have_text("Audience Weekly news created.")
    expect(page.get_by_role("rowheader", name="Weekly news")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "04-audiences")

    # A new signup form offering it.
    nav(page, "Forms").click()
    page.get_by_role("link", name="New form").click()
    expect(page.get_by_role("heading", level=1, name="New signup form")).to_be_visible()
    page.get_by_label("Title").fill("Join Acme Tea")
    page.get_by_label("Address").fill("newsletter")
    page.get_by_role("group", name="Audiences offered").get_by_role("checkbox", name="Weekly news").check()
    wording = page.get_by_label("Consent wording")
    expect(wording).to_have_value("Yes, email me what I ticked. I can unsubscribe at any time.")
    wording.fill(FORM_WORDING)
    assert_page_basics(page)
    shot(page, output_dir, "05-new-form")
    page.get_by_role("button", name="Create form").click()

    # The form's page: its live preview and the code to embed it.
    expect(success(page)).to_have_text("Form Join Acme Tea created.")
    expect(page.get_by_role("heading", level=1, name="Join Acme Tea")).to_be_visible()
    preview = page.get_by_title("Preview of Join Acme Tea")
    preview.scroll_into_view_if_needed()  # the frame loads lazily
    framed = page.frame_locator("iframe.preview")
    expect(framed.get_by_label("Email address")).to_be_visible()
    expect(framed.get_by_role("button", name="Subscribe")).to_be_visible()
    expect(framed.get_by_text(FORM_WORDING)).to_be_visible()
    action = f'<form action="{url}/s/{brand.slug}/newsletter/"'
    snippet = page.get_by_label("HTML form (no JavaScript, styled by your site)")
    snippet_text = snippet.input_value()
    assert snippet_text.startswith(action), snippet_text[:120]
    assert escape(FORM_WORDING) in snippet_text  # as HTML: the apostrophe is escaped
    assert_page_basics(page)

    # Copy: the snippet lands on the clipboard, and a screen reader hears so.
    page.get_by_role("button", name="Copy HTML form").click()
    expect(page.locator("#copy-status")).to_have_text("Copied.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == snippet_text
    shot(page, output_dir, "06-form-page")

    # Imports: upload the file.
    nav(page, "Imports").click()
    expect(page.get_by_role("heading", level=1, name="Imports")).to_be_visible()
    page.get_by_label("CSV file", exact=True).set_input_files(
        {"name": "customers.csv", "mimeType": "text/csv", "buffer": CSV_TEXT.encode()}
    )
    assert_page_basics(page)
    shot(page, output_dir, "07-upload")
    page.get_by_role("button", name="Upload").click()

    # Map the columns, choose the audience, and attest the consent.
    expect(success(page)).to_have_text("File uploaded. Now choose what each column holds.")
    expect(page.get_by_role("heading", level=1, name="Import customers.csv")).to_be_visible()
    expect(page.get_by_text("5 rows", exact=True)).to_be_visible()
    first_rows = page.get_by_role("table", name="The first rows")
    expect(first_rows.get_by_role("row")).to_have_count(6)  # the header and five rows
    expect(page.get_by_label("Email address")).to_have_value("0")  # guessed from the header
    expect(page.get_by_role("combobox", name="Name")).to_have_value("1")
    page.get_by_role("group", name="Also keep these columns as attributes").get_by_label("3. Customer since").check()
    page.get_by_role("group", name="Add everyone to").get_by_role("checkbox", name="Weekly news").check()
    page.get_by_role("radio", name="An attestation for the whole file").check()
    page.get_by_label("Where and how these people opted in").fill(SOURCE)
    page.get_by_label("Date of the opt-in").fill(ATTESTED_ON.isoformat())
    page.get_by_label("The consent wording they agreed to").fill(ATTESTATION)
    page.get_by_role("checkbox", name="I confirm these people gave double-opt-in consent").check()
    assert_page_basics(page)
    shot(page, output_dir, "08-map-columns")
    page.get_by_role("button", name="Start the import").click()

    # The worker runs it; the page polls and shows the result when it is done.
    expect(success(page)).to_have_text("Import started.")
    expect(page.get_by_role("heading", level=1, name="Import customers.csv")).to_be_visible()
    shot(page, output_dir, "09-import-started")
    expect(page.locator("#import-status")).to_have_text("Done")
    bar = page.get_by_role("progressbar", name="Progress")
    expect(bar).to_have_attribute("max", "5")
    expect(bar).to_have_attribute("value", "5")
    expect(page.locator("#import-text")).to_have_text("5 of 5 rows (100%)")
    counts = page.get_by_role("list", name="What happened to the rows")
    expected_counts = {"created": "3", "updated": "0", "pending": "0", "suppressed": "1", "invalid": "1"}
    for key, value in expected_counts.items():
        expect(counts.locator(f'[data-count="{key}"]'), key).to_have_text(value)
    expect(page.get_by_text("2 rows were not imported as given.")).to_be_visible()
    expect(page.get_by_text("Nobody from this file is awaiting confirmation.")).to_be_visible()
    assert_page_basics(page)
    shot(page, output_dir, "10-import-done")

    # The report names the rows that were not imported, and why.
    with page.expect_download() as download:
        page.get_by_role("link", name="Download the report (CSV: line, email, reason)").click()
    assert download.value.suggested_filename.endswith("-report.csv")
    with Path(download.value.path()).open(newline="", encoding="utf-8") as report_file:
        report = list(csv.reader(report_file))
    assert report == [
        ["line", "email", "reason", "detail"],
        ["4", "not-an-address", "Not a valid email address", ""],
        ["5", "bounced@example.com", "Suppressed address (bounce, complaint or the team's list)", ""],
    ]

    # Subscribers: find Erin and open her record.
    nav(page, "Subscribers").click()
    expect(page.get_by_role("heading", level=1, name="Subscribers")).to_be_visible()
    expect(page.get_by_text("3 subscribers", exact=True)).to_be_visible()
    page.get_by_role("textbox", name="Search").fill("erin@")
    page.get_by_role("button", name="Apply").click()
    results = page.get_by_role("table").get_by_role("row")
    expect(results).to_have_count(2)  # the header and Erin
    expect(results.nth(1)).to_contain_text("Erin Example")
    expect(results.nth(1)).to_contain_text("Confirmed")
    expect(results.nth(1)).to_contain_text("Weekly news")
    expect(results.nth(1)).to_contain_text("Import")
    assert_page_basics(page)
    shot(page, output_dir, "11-search")
    page.get_by_role("link", name="erin@example.com").click()

    # Her consent history: the import, with the team's attestation and who made it.
    expect(page.get_by_role("heading", level=1, name="erin@example.com")).to_be_visible()
    profile = page.get_by_role("region", name="Profile")
    expect(profile).to_contain_text("Erin Example")
    expect(page.get_by_role("region", name="Attributes")).to_contain_text("Customer since2021")
    events_shown = page.get_by_role("list", name="Consent history").get_by_role("listitem")
    expect(events_shown).to_have_count(1)
    event = events_shown.first
    expect(event.get_by_role("heading", level=3)).to_contain_text("Subscription confirmed")
    for term, value in [
        ("By", "Team member (alice@acme.example)"),
        ("Through", "Import"),
        ("Audiences", "Weekly news"),
        ("Wording shown", ATTESTATION),
        ("consent_source", SOURCE),
        ("attested_on", ATTESTED_ON.isoformat()),
        ("file", "customers.csv"),
        ("line", "2"),
        ("imported_by", "alice@acme.example"),
    ]:
        expect(event.locator(f"dt:text-is('{term}') + dd"), term).to_have_text(value)
    assert_page_basics(page)
    shot(page, output_dir, "12-subscriber")

    # What the database holds.
    news = Audience.objects.get(brand=brand)
    assert (news.name, news.description, news.is_public) == ("Weekly news", "Every Friday.", True)
    form = SignupForm.objects.get(brand=brand)
    assert (form.slug, form.title, form.is_active) == ("newsletter", "Join Acme Tea", True)
    assert list(form.audiences.all()) == [news]
    assert form.current_wording().text == FORM_WORDING

    job = ImportJob.objects.get(brand=brand)
    assert job.status == ImportJob.Status.DONE
    assert (job.total_rows, job.processed_rows) == (5, 5)
    assert job.basis == ImportJob.Basis.ATTESTATION
    assert (job.consent_source, job.attestation_wording) == (SOURCE, ATTESTATION)
    assert job.attested_on == ATTESTED_ON
    assert (job.created_by, job.started_by) == (member, member)
    assert list(job.audiences.all()) == [news]
    assert job.mapping == {"email": 0, "name": 1, "language": None, "confirmed_at": None, "attributes": [2]}
    assert {k: v for k, v in job.counts.items() if v} == {"created": 3, "invalid": 1, "suppressed": 1}
    assert sorted(job.issues.values_list("line", "reason")) == [
        (4, ImportIssue.Reason.INVALID_EMAIL),
        (5, ImportIssue.Reason.SUPPRESSED),
    ]

    subscribers = Subscriber.objects.filter(brand=brand).order_by("email")
    assert [s.email for s in subscribers] == IMPORTED
    erin = subscribers[0]
    assert (erin.name, erin.status, erin.source) == ("Erin Example", Subscriber.Status.CONFIRMED, "import")
    assert erin.attributes == {"Customer since": "2021"}
    assert erin.confirmed_at == datetime.combine(ATTESTED_ON, time.min, tzinfo=UTC)  # the attested day
    assert set(Subscription.objects.filter(subscriber__brand=brand).values_list("audience", "status")) == {
        (news.pk, Subscription.Status.ACTIVE)
    }
    assert Subscription.objects.filter(subscriber__brand=brand).count() == 3
    events = ConsentEvent.objects.filter(brand=brand).order_by("subscriber__email")
    assert [e.subscriber.email for e in events] == IMPORTED
    for event_row in events:
        assert event_row.kind == ConsentEvent.Kind.CONFIRMED
        assert (event_row.actor, event_row.actor_user, event_row.source) == ("team", member, "import")
        assert event_row.wording_text == ATTESTATION
        assert event_row.audiences == [{"id": news.pk, "name": "Weekly news"}]
        assert event_row.details["import_job"] == job.pk
        assert event_row.details["consent_source"] == SOURCE
    assert not Subscriber.objects.filter(email_hash=bounced.email_hash).exists()

    assert list(AuditEvent.objects.filter(brand=brand).order_by("created_at", "pk").values_list("action", "user")) == [
        ("audience.created", member.pk),
        ("form.created", member.pk),
        ("import.created", member.pk),
        ("import.started", member.pk),
    ]
