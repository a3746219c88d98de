"""CSV imports: evidence, pending rows, what is never re-added, idempotence, the report,
the confirmation request, the pages and who may use them."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.core.files.base import ContentFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audiences import consent, imports, tasks
from audiences.consent import Evidence
from audiences.models import (
    Audience,
    AuditEvent,
    Brand,
    ConsentEvent,
    ConsumerEmail,
    ImportJob,
    Membership,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)

HEADER = "email,name,language,confirmed_at,plan\n"
WORDING = "Yes, send me the Acme Tea newsletter. I can unsubscribe at any time."
CONSUMER = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM, ip="198.51.100.7")
Basis = ImportJob.Basis
OnCommit = Callable[[], AbstractContextManager[Any]]


@pytest.fixture(autouse=True)
def import_dir(settings: Any, tmp_path: Path) -> Path:
    settings.IMPORT_DIR = tmp_path / "imports"
    return settings.IMPORT_DIR


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks: Any) -> OnCommit:
    return lambda: django_capture_on_commit_callbacks(execute=True)


def upload(brand: Brand, user: User, text: str, name: str = "people.csv") -> ImportJob:
    return imports.create(brand=brand, user=user, upload=ContentFile(text.encode(), name=name))


def start(job: ImportJob, user: User, audiences: list[Audience], basis: str = Basis.NONE, **kwargs: Any) -> ImportJob:
    """Start the job without running it (the task is queued on commit)."""
    mapping = kwargs.pop("mapping", imports.Mapping(email=0, name=1, language=2, attributes=(4,)))
    if basis == Basis.COLUMN:
        mapping = imports.Mapping(email=0, name=1, language=2, confirmed_at=3, attributes=(4,))
        kwargs.setdefault("consent_source", "Checkout newsletter box, shop.acme.example")
    if basis == Basis.ATTESTATION:
        kwargs.setdefault("consent_source", "Paper forms at the Bristol shop")
        kwargs.setdefault("attested_on", date(2024, 3, 1))
        kwargs.setdefault("wording", WORDING)
    return imports.start(job=job, user=user, mapping=mapping, audiences=audiences, basis=basis, **kwargs)


def run(job: ImportJob, user: User, audiences: list[Audience], on_commit: OnCommit, **kwargs: Any) -> ImportJob:
    """Start the job and run its task (eagerly, as the transaction commits)."""
    with on_commit():
        start(job, user, audiences, **kwargs)
    job.refresh_from_db()
    return job


def import_text(
    text: str, brand: Brand, user: User, audiences: list[Audience], on_commit: OnCommit, **kwargs: Any
) -> ImportJob:
    return run(upload(brand, user, text), user, audiences, on_commit, **kwargs)


def issues(job: ImportJob) -> list[tuple[int, str]]:
    return list(job.issues.order_by("line").values_list("line", "reason"))


def consent_state() -> dict[str, list[dict[str, Any]]]:
    """Every subscriber, subscription, consent event, suppression and consumer email."""
    models: list[Any] = [Subscriber, Subscription, ConsentEvent, Suppression, ConsumerEmail]
    return {m._meta.label: list(m._default_manager.order_by("pk").values()) for m in models}


# --- Evidence -------------------------------------------------------------------


def test_it_records_the_attestation_as_evidence_with_the_importing_user(
    brand: Brand, editor: User, news: Audience, offers: Audience, on_commit: OnCommit
) -> None:
    text = HEADER + "Dana@Example.com,Dana,de,,gold\nfox@example.com,,,,\n"
    job = import_text(text, brand, editor, [news, offers], on_commit, basis=Basis.ATTESTATION)

    assert job.status == ImportJob.Status.DONE
    assert job.counts["created"] == 2
    dana = Subscriber.objects.get(email="dana@example.com")
    assert dana.status == Subscriber.Status.CONFIRMED
    assert (dana.name, dana.language, dana.attributes, dana.source) == ("Dana", "de", {"plan": "gold"}, "import")
    assert dana.email_hash == email_hash("dana@example.com")
    assert dana.confirmed_at is not None
    assert dana.confirmed_at.date() == date(2024, 3, 1)
    assert set(dana.subscriptions.values_list("audience__name", "status")) == {
        ("Weekly news", "active"),
        ("Offers", "active"),
    }
    event = dana.consent_events.get()
    assert (event.kind, event.actor, event.source, event.actor_user) == ("confirmed", "team", "import", editor)
    assert event.wording_text == WORDING
    assert {a["name"] for a in event.audiences} == {"Weekly news", "Offers"}
    assert event.details["basis"] == "attestation"
    assert event.details["attested_on"] == "2024-03-01"
    assert event.details["consent_source"] == "Paper forms at the Bristol shop"
    assert event.details["imported_by"] == "bob@acme.example"
    assert (event.details["file"], event.details["line"], event.details["import_job"]) == ("people.csv", 2, job.pk)
    eligible = Subscriber.objects.filter(brand=brand).eligible(audience_ids=[news.pk])
    assert set(eligible.values_list("email", flat=True)) == {"dana@example.com", "fox@example.com"}
    actions = list(AuditEvent.objects.filter(brand=brand).order_by("pk").values_list("action", "user"))
    assert actions == [("import.created", editor.pk), ("import.started", editor.pk)]


def test_it_records_each_rows_confirmation_time_and_leaves_rows_without_one_pending(
    brand: Brand, editor: User, news: Audience, on_commit: OnCommit
) -> None:
    future = (timezone.now() + timedelta(days=2)).isoformat()
    text = (
        HEADER
        + "a@example.com,A,en,2023-05-04T10:20:30Z,\n"
        + "b@example.com,B,en,2023-05-04 08:00,\n"
        + "c@example.com,C,en,,\n"
        + "d@example.com,D,en,last tuesday,\n"
        + f"e@example.com,E,en,{future},\n"
    )
    job = import_text(text, brand, editor, [news], on_commit, basis=Basis.COLUMN)

    a = Subscriber.objects.get(email="a@example.com")
    assert a.status == Subscriber.Status.CONFIRMED
    assert a.confirmed_at is not None
    assert a.confirmed_at.isoformat() == "2023-05-04T10:20:30+00:00"
    event = a.consent_events.get()
    assert event.kind == ConsentEvent.Kind.CONFIRMED
    assert event.details["confirmed_at"] == "2023-05-04T10:20:30+00:00"
    assert event.details["basis"] == "column"
    assert event.details["consent_source"] == "Checkout newsletter box, shop.acme.example"
    b = Subscriber.objects.get(email="b@example.com")
    assert b.confirmed_at is not None
    assert b.confirmed_at.isoformat() == "2023-05-04T08:00:00+00:00"  # no zone given: UTC
    for email in ("c@example.com", "d@example.com", "e@example.com"):
        person = Subscriber.objects.get(email=email)
        assert person.status == Subscriber.Status.PENDING
        assert list(person.subscriptions.values_list("status", flat=True)) == ["pending"]
        assert person.consent_events.get().kind == ConsentEvent.Kind.REQUESTED
    assert job.counts["created"] == 5
    assert job.counts["pending"] == 3
    assert issues(job) == [(5, "bad_time"), (6, "bad_time")]


def test_rows_without_proof_are_pending_and_never_eligible(
    brand: Brand, editor: User, news: Audience, on_commit: OnCommit
) -> None:
    job = import_text(HEADER + "x@example.com,X,en,,\n", brand, editor, [news], on_commit)

    person = Subscriber.objects.get(email="x@example.com")
    assert person.status == Subscriber.Status.PENDING
    assert not Subscriber.objects.filter(brand=brand).eligible(audience_ids=[news.pk]).exists()
    event = person.consent_events.get()
    assert (event.kind, event.actor, event.actor_user, event.wording_text) == ("requested", "team", editor, "")
    assert event.details["basis"] == "none"
    assert (job.counts["created"], job.counts["pending"]) == (1, 1)
    assert len(mail.outbox) == 0  # nobody is emailed until the team asks


def test_an_import_with_proof_confirms_a_pending_signup_and_never_downgrades_a_confirmed_one(
    brand: Brand, editor: User, signup_form: SignupForm, news: Audience, offers: Audience, on_commit: OnCommit
) -> None:
    consent.request_subscription(form=signup_form, email="pending@example.com", audiences=[news], evidence=CONSUMER)
    consent.request_subscription(form=signup_form, email="sure@example.com", audiences=[news], evidence=CONSUMER)
    sure = Subscriber.objects.get(email="sure@example.com")
    consent.confirm(subscriber=sure, audience_ids=[news.pk], evidence=CONSUMER)

    text = HEADER + "pending@example.com,P,,,\nsure@example.com,S,,,\n"
    first = import_text(text, brand, editor, [news, offers], on_commit)  # no proof
    sure.refresh_from_db()
    assert sure.status == Subscriber.Status.CONFIRMED
    assert dict(sure.subscriptions.values_list("audience__name", "status")) == {
        "Weekly news": "active",
        "Offers": "pending",
    }
    assert first.counts["updated"] == 2

    second = import_text(text, brand, editor, [news], on_commit, basis=Basis.ATTESTATION)
    pending = Subscriber.objects.get(email="pending@example.com")
    assert pending.status == Subscriber.Status.CONFIRMED
    assert list(pending.subscriptions.filter(audience=news).values_list("status", flat=True)) == ["active"]
    assert pending.consent_events.order_by("pk").last().kind == ConsentEvent.Kind.CONFIRMED  # type: ignore[union-attr]
    assert second.counts["updated"] == 1
    assert second.counts["unchanged"] == 1


# --- Never re-added -------------------------------------------------------------


def test_it_skips_suppressed_blocked_erased_and_unsubscribed_addresses_and_reports_them(
    brand: Brand, editor: User, signup_form: SignupForm, news: Audience, on_commit: OnCommit
) -> None:
    people = {}
    for email in ("blocked@example.com", "erased@example.com", "left@example.com"):
        consent.request_subscription(form=signup_form, email=email, audiences=[news], evidence=CONSUMER)
        people[email] = Subscriber.objects.get(email=email)
        consent.confirm(subscriber=people[email], audience_ids=[news.pk], evidence=CONSUMER)
    consent.block(subscriber=people["blocked@example.com"], evidence=CONSUMER)
    consent.erase(subscriber=people["erased@example.com"], evidence=CONSUMER)
    consent.unsubscribe(subscriber=people["left@example.com"], audience_ids=None, evidence=CONSUMER)
    Suppression.objects.create(
        brand=brand, email_hash=email_hash("bounced@example.com"), reason=Suppression.Reason.HARD_BOUNCE
    )
    before = consent_state()

    text = HEADER + "".join(
        f"{e},,,,\n" for e in ("Blocked@example.com", "erased@example.com", "left@example.com", "bounced@example.com")
    )
    job = import_text(text, brand, editor, [news], on_commit, basis=Basis.ATTESTATION)

    assert consent_state() == before
    assert not Subscriber.objects.filter(email__in=["erased@example.com", "bounced@example.com"]).exists()
    assert issues(job) == [(2, "blocked"), (3, "erased"), (4, "unsubscribed"), (5, "suppressed")]
    assert {k: job.counts[k] for k in ("blocked", "erased", "unsubscribed", "suppressed", "created")} == {
        "blocked": 1,
        "erased": 1,
        "unsubscribed": 1,
        "suppressed": 1,
        "created": 0,
    }


def test_it_does_not_resubscribe_an_audience_the_person_left(
    brand: Brand, editor: User, signup_form: SignupForm, news: Audience, offers: Audience, on_commit: OnCommit
) -> None:
    consent.request_subscription(form=signup_form, email="kay@example.com", audiences=[news, offers], evidence=CONSUMER)
    kay = Subscriber.objects.get()
    consent.confirm(subscriber=kay, audience_ids=[news.pk, offers.pk], evidence=CONSUMER)
    consent.unsubscribe(subscriber=kay, audience_ids=[offers.pk], evidence=CONSUMER)

    job = import_text(HEADER + "kay@example.com,,,,\n", brand, editor, [offers], on_commit, basis=Basis.ATTESTATION)

    assert kay.subscriptions.get(audience=offers).status == Subscription.Status.INACTIVE
    assert job.counts["unsubscribed"] == 1
    assert list(job.issues.values_list("reason", "detail")) == [("unsubscribed", "Offers")]
    assert not kay.consent_events.filter(source=ConsentEvent.Source.IMPORT).exists()


# --- Idempotence, bad rows, the report -----------------------------------------


def test_running_the_same_file_again_changes_nothing(
    brand: Brand, editor: User, news: Audience, offers: Audience, on_commit: OnCommit
) -> None:
    text = HEADER + "".join(f"p{i}@example.com,P{i},en,{'2024-01-02' if i % 2 else ''},v{i}\n" for i in range(12))
    first = import_text(text, brand, editor, [news, offers], on_commit, basis=Basis.COLUMN)
    after_first = consent_state()

    second = import_text(text, brand, editor, [news, offers], on_commit, basis=Basis.COLUMN)

    assert consent_state() == after_first
    assert first.counts["created"] == 12
    assert second.counts["unchanged"] == 12
    assert second.counts["created"] == second.counts["updated"] == 0
    assert second.counts["pending"] == 6  # still awaiting confirmation, and said so


def test_bad_rows_are_reported_with_their_reasons_and_the_rest_imported(
    brand: Brand, editor: User, news: Audience, on_commit: OnCommit, client: Client
) -> None:
    text = (
        HEADER
        + "good@example.com,Good,en,,\n"  # line 2
        + "not-an-address,X,en,,\n"  # 3
        + "GOOD@example.com,Again,en,,\n"  # 4: same address as line 2
        + "\n"  # 5: blank lines are skipped
        + "lang@example.com,L,klingon,,\n"  # 6
        + "short@example.com,S\n"  # 7
        + f"long@example.com,{'n' * 101},en,,\n"  # 8
        + "=HYPERLINK(1),X,en,,\n"  # 9
        + "late@example.com,Late,en,,\n"  # 10
        + "good@example.com,Thrice,en,,\n"  # 11: a later chunk
    )
    job = upload(brand, editor, text)
    start(job, editor, [news])
    imports.run(job_id=job.pk, chunk_rows=3)  # chunks: 2-4, 6-8, 9-11
    job.refresh_from_db()

    assert set(Subscriber.objects.values_list("email", flat=True)) == {"good@example.com", "late@example.com"}
    assert Subscriber.objects.get(email="good@example.com").name == "Good"
    assert issues(job) == [
        (3, "invalid_email"),
        (4, "duplicate"),
        (6, "unknown_language"),
        (7, "field_count"),
        (8, "too_long"),
        (9, "invalid_email"),
        (11, "duplicate"),
    ]
    assert job.counts["invalid"] == 7
    assert job.processed_rows == job.total_rows == 9

    client.force_login(editor)
    response = client.get(f"/b/acme/imports/{job.pk}/report.csv")
    assert response.status_code == 200
    assert response["Content-Disposition"] == f'attachment; filename="import-{job.pk}-report.csv"'
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))  # type: ignore[attr-defined]
    assert rows[0] == ["line", "email", "reason", "detail"]
    assert rows[1] == ["3", "not-an-address", "Not a valid email address", ""]
    assert rows[2] == ["4", "GOOD@example.com", "Appears earlier in the file", "first on line 2"]
    assert rows[6][1] == "'=HYPERLINK(1)"  # never a formula in a spreadsheet
    assert rows[7] == ["11", "good@example.com", "Appears earlier in the file", "first on line 2"]


def test_the_upload_refuses_files_that_are_not_utf8_csv(brand: Brand, editor: User, import_dir: Path) -> None:
    for content, name in [
        ("email\nrené@example.com\n".encode("latin-1"), "latin.csv"),
        (b"email\nx@example.com\n", "people.xlsx"),
        (b"email\n", "header-only.csv"),
        ("email\nx@example.com\n".encode("utf-16"), "utf16.csv"),
    ]:
        with pytest.raises(imports.ImportFileError):
            imports.create(brand=brand, user=editor, upload=ContentFile(content, name=name))
    assert not ImportJob.objects.exists()
    assert not [p for p in import_dir.rglob("*") if p.is_file()]  # nothing left behind


def test_it_reads_a_bom_and_semicolons(brand: Brand, editor: User) -> None:
    job = upload(brand, editor, "\ufeffE-Mail;Name\nx@example.com;X\n")
    assert (job.encoding, job.delimiter, job.header, job.total_rows) == ("utf-8-sig", ";", ["E-Mail", "Name"], 1)


# --- Running safely -------------------------------------------------------------


def test_the_task_is_safe_to_run_twice(brand: Brand, editor: User, news: Audience, on_commit: OnCommit) -> None:
    job = import_text(HEADER + "x@example.com,X,en,,\n", brand, editor, [news], on_commit)
    state = consent_state()

    assert tasks.run_import.delay(job.pk).get() == "not claimed"

    assert consent_state() == state
    job.refresh_from_db()
    assert job.attempt == 1


def test_a_stale_running_job_resumes_after_its_last_chunk(brand: Brand, editor: User, news: Audience) -> None:
    text = HEADER + "".join(f"r{i}@example.com,R{i},en,,\n" for i in range(5))
    job = upload(brand, editor, text)
    start(job, editor, [news])
    # A worker died after committing the first two rows and has not been heard of for an hour.
    ImportJob.objects.filter(pk=job.pk).update(
        status=ImportJob.Status.RUNNING,
        processed_rows=2,
        counts={"created": 2},
        heartbeat_at=timezone.now() - timedelta(hours=1),
        attempt=1,
    )

    assert imports.run(job_id=job.pk) == "done"

    job.refresh_from_db()
    assert sorted(Subscriber.objects.values_list("email", flat=True)) == [f"r{i}@example.com" for i in (2, 3, 4)]
    assert (job.status, job.processed_rows, job.counts["created"], job.attempt) == ("done", 5, 5, 2)


def test_a_running_job_with_a_fresh_heartbeat_is_left_alone(brand: Brand, editor: User, news: Audience) -> None:
    job = upload(brand, editor, HEADER + "x@example.com,X,en,,\n")
    start(job, editor, [news])
    ImportJob.objects.filter(pk=job.pk).update(status=ImportJob.Status.RUNNING, heartbeat_at=timezone.now())

    assert imports.run(job_id=job.pk) == "not claimed"
    assert not Subscriber.objects.exists()


def test_an_unreadable_file_fails_the_job_with_the_reason(brand: Brand, editor: User, news: Audience) -> None:
    job = upload(brand, editor, HEADER + "x@example.com,X,en,,\n")
    start(job, editor, [news])
    job.file.delete(save=False)

    assert tasks.run_import.delay(job.pk).get() == "failed"

    job.refresh_from_db()
    assert job.status == ImportJob.Status.FAILED
    assert "no longer there" in job.error
    assert not Subscriber.objects.exists()


def _queries_for_one_chunk(brand: Brand, editor: User, audiences: list[Audience], rows: int, tag: str) -> int:
    """Queries to import one chunk of ``rows`` mixing every path: created, updated, suppressed, invalid."""
    emails = [f"{tag}{i}@example.com" for i in range(rows)]
    existing = upload(brand, editor, HEADER + "".join(f"{e},,,,\n" for e in emails[: rows // 2]))
    start(existing, editor, audiences)
    imports.run(job_id=existing.pk)
    Suppression.objects.create(brand=brand, email_hash=email_hash(emails[-1]), reason=Suppression.Reason.COMPLAINT)
    text = HEADER + "".join(f"{e},N,de,,x\n" for e in emails) + f"not-an-address-{tag},,,,\n"
    job = upload(brand, editor, text)
    start(job, editor, audiences, basis=Basis.ATTESTATION)
    with CaptureQueriesContext(connection) as queries:
        imports.run(job_id=job.pk)
    job.refresh_from_db()
    assert (job.counts["created"], job.counts["updated"]) == (rows - rows // 2 - 1, rows // 2)
    return len(queries)


def test_the_queries_per_chunk_do_not_grow_with_its_rows(
    brand: Brand, editor: User, news: Audience, offers: Audience
) -> None:
    small = _queries_for_one_chunk(brand, editor, [news, offers], 6, "s")
    large = _queries_for_one_chunk(brand, editor, [news, offers], 120, "l")
    assert small == large


# --- Confirmation requests ------------------------------------------------------


@pytest.fixture
def pending_import(
    brand: Brand, editor: User, signup_form: SignupForm, news: Audience, offers: Audience, on_commit: OnCommit
) -> ImportJob:
    """Four people imported without proof; one of them asked for Offers on a form a minute ago."""
    consent.request_subscription(form=signup_form, email="recent@example.com", audiences=[offers], evidence=CONSUMER)
    mail.outbox.clear()
    text = HEADER + "".join(f"{e}@example.com,,,,\n" for e in ("amy", "ben", "cat", "recent"))
    return import_text(text, brand, editor, [news], on_commit)


def test_the_team_can_ask_pending_rows_to_confirm_once(
    client: Client, editor: User, pending_import: ImportJob, on_commit: OnCommit
) -> None:
    cat = Subscriber.objects.get(email="cat@example.com")
    consent.block(subscriber=cat, evidence=CONSUMER)
    client.force_login(editor)
    url = f"/b/acme/imports/{pending_import.pk}/confirmations/"

    with on_commit():
        response = client.post(url)

    assert response.status_code == 302
    # Not the blocked address, nor the one that got a confirmation email a minute ago.
    assert sorted(m.to[0] for m in mail.outbox) == ["amy@example.com", "ben@example.com"]
    body = mail.outbox[0].body
    assert "Acme Tea would like to keep sending you these emails" in body
    assert "asked to receive" not in body
    assert "Weekly news" in body
    pending_import.refresh_from_db()
    assert pending_import.confirmations_queued == 2
    assert pending_import.confirmations_requested_by == editor
    event = AuditEvent.objects.get(action="import.confirmation_requests_sent")
    assert event.details == {"job": pending_import.pk, "queued": 2}
    assert (
        not ConsentEvent.objects.filter(kind=ConsentEvent.Kind.REQUESTED, actor=ConsentEvent.Actor.CONSUMER)
        .exclude(subscriber__email="recent@example.com")
        .exists()
    )

    with on_commit():
        again = client.post(url, follow=True)
    assert "can be sent once" in again.content.decode()
    assert len(mail.outbox) == 2
    assert ConsumerEmail.objects.filter(subscriber__email="amy@example.com").count() == 1


def test_the_emailed_link_confirms_an_imported_person(
    client: Client, editor: User, pending_import: ImportJob, news: Audience, on_commit: OnCommit
) -> None:
    with on_commit():
        imports.request_confirmations(job=pending_import, user=editor)
    message = next(m for m in mail.outbox if m.to == ["amy@example.com"])
    match = re.search(r"https?://[^/\s]+(/c/\S+)", str(message.body))
    assert match
    client.post(match.group(1))
    amy = Subscriber.objects.get(email="amy@example.com")
    assert amy.status == Subscriber.Status.CONFIRMED
    assert amy.consent_events.order_by("pk").last().actor == ConsentEvent.Actor.CONSUMER  # type: ignore[union-attr]
    assert Subscriber.objects.filter(pk=amy.pk).eligible(audience_ids=[news.pk]).exists()


# --- Pages ----------------------------------------------------------------------


def test_an_editor_uploads_maps_and_starts_an_import_through_the_pages(
    client: Client, editor: User, news: Audience, offers: Audience, on_commit: OnCommit
) -> None:
    client.force_login(editor)
    text = "Email,Full name,Plan\nzoe@example.com,Zoe,gold\n"
    response = client.post("/b/acme/imports/", {"file": ContentFile(text.encode(), name="shop.csv")})
    job = ImportJob.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/b/acme/imports/{job.pk}/"

    page = client.get(response["Location"])
    html = page.content.decode()
    assert page.status_code == 200
    assert "zoe@example.com" in html
    assert page.context["form"]["email_column"].initial == 0
    assert page.context["form"]["name_column"].initial == 1

    form = {
        "email_column": "0",
        "name_column": "1",
        "language_column": "",
        "attribute_columns": ["2"],
        "audiences": [news.pk],
        "basis": "attestation",
        "consent_source": "Shop checkout box",
        "attested_on": "2024-02-01",
        "wording": WORDING,
        "attest": "on",
    }
    with on_commit():
        response = client.post(f"/b/acme/imports/{job.pk}/", form)
    assert response.status_code == 302

    zoe = Subscriber.objects.get()
    assert (zoe.status, zoe.name, zoe.attributes) == ("confirmed", "Zoe", {"Plan": "gold"})
    done = client.get(f"/b/acme/imports/{job.pk}/").content.decode()
    assert "Every row was imported as given." in done
    assert 'http-equiv="refresh"' not in done


def test_the_start_form_asks_for_the_attestation_and_changes_nothing_without_it(
    client: Client, editor: User, brand: Brand, news: Audience
) -> None:
    job = upload(brand, editor, HEADER + "x@example.com,X,en,,\n")
    client.force_login(editor)
    form = {"email_column": "0", "audiences": [news.pk], "basis": "attestation", "consent_source": "Shop"}

    response = client.post(f"/b/acme/imports/{job.pk}/", form)

    assert response.status_code == 400
    assert set(response.context["form"].errors) == {"attested_on", "wording", "attest"}
    job.refresh_from_db()
    assert job.status == ImportJob.Status.UPLOADED


def test_the_start_form_refuses_one_column_for_two_purposes(
    client: Client, editor: User, brand: Brand, news: Audience
) -> None:
    job = upload(brand, editor, HEADER + "x@example.com,X,en,,\n")
    client.force_login(editor)
    form = {"email_column": "0", "name_column": "0", "audiences": [news.pk], "basis": "none"}
    assert client.post(f"/b/acme/imports/{job.pk}/", form).status_code == 400


def test_the_upload_page_shows_a_bad_file_as_a_form_error(client: Client, editor: User) -> None:
    client.force_login(editor)
    response = client.post("/b/acme/imports/", {"file": ContentFile(b"\xff\xfe\x00\x01junk", name="x.csv")})
    assert response.status_code == 400
    assert "UTF" in response.content.decode()
    assert not ImportJob.objects.exists()


def test_the_progress_page_refreshes_while_the_import_runs_and_the_status_endpoint_says_how_far(
    client: Client, editor: User, brand: Brand, news: Audience
) -> None:
    job = upload(brand, editor, HEADER + "".join(f"q{i}@example.com,,,,\n" for i in range(4)))
    start(job, editor, [news])  # queued: the task runs on commit, which this test never reaches
    client.force_login(editor)

    html = client.get(f"/b/acme/imports/{job.pk}/").content.decode()
    assert '<meta http-equiv="refresh" content="2">' in html
    assert '<progress class="progress" id="import-bar" max="4" value="0"' in html
    assert f'data-status-url="/b/acme/imports/{job.pk}/status.json"' in html
    assert 'aria-live="polite"' in html

    response = client.get(f"/b/acme/imports/{job.pk}/status.json")
    assert response.status_code == 200
    assert response["Cache-Control"] == "no-store"
    state = json.loads(response.content)
    assert (state["status"], state["processed"], state["total"], state["finished"]) == ("queued", 0, 4, False)

    imports.run(job_id=job.pk)
    state = client.get(f"/b/acme/imports/{job.pk}/status.json").json()
    assert (state["status"], state["processed"], state["percent"], state["finished"]) == ("done", 4, 100, True)
    assert state["counts"]["created"] == 4
    assert state["counts"]["pending"] == 4


def test_the_overview_shows_running_imports(client: Client, owner: User, brand: Brand, news: Audience) -> None:
    job = upload(brand, owner, HEADER + "x@example.com,,,,\n", name="autumn.csv")
    start(job, owner, [news])
    client.force_login(owner)
    html = client.get("/b/acme/").content.decode()
    assert "Running jobs" in html
    assert f'href="/b/acme/imports/{job.pk}/"' in html
    assert "autumn.csv" in html


def test_the_nav_shows_imports_to_editors_only(client: Client, editor: User, viewer: User) -> None:
    client.force_login(editor)
    assert 'href="/b/acme/imports/"' in client.get("/b/acme/").content.decode()
    client.force_login(viewer)
    assert 'href="/b/acme/imports/"' not in client.get("/b/acme/").content.decode()


# --- Who may -----------------------------------------------------------------------


@pytest.fixture
def job(brand: Brand, editor: User, news: Audience, on_commit: OnCommit) -> ImportJob:
    return import_text(HEADER + "x@example.com,,,,\n", brand, editor, [news], on_commit)


def _urls(job: ImportJob) -> Iterator[tuple[str, str]]:
    base = f"/b/acme/imports/{job.pk}/"
    yield from [("get", "/b/acme/imports/"), ("post", "/b/acme/imports/"), ("get", base), ("post", base)]
    yield from [("get", base + "status.json"), ("get", base + "report.csv"), ("post", base + "confirmations/")]


def test_editors_and_owners_may_use_every_import_page(
    client: Client, job: ImportJob, editor: User, owner: User
) -> None:
    for user in (editor, owner):
        client.force_login(user)
        for method, url in _urls(job):
            if method == "get":
                assert client.get(url).status_code == 200, url


def test_viewers_get_403_on_every_import_page(client: Client, job: ImportJob, viewer: User) -> None:
    client.force_login(viewer)
    state = consent_state()
    for method, url in _urls(job):
        assert getattr(client, method)(url).status_code == 403, (method, url)
    assert consent_state() == state
    assert ImportJob.objects.count() == 1


def test_another_brands_member_gets_404_and_anonymous_users_the_login_page(
    client: Client, job: ImportJob, outsider: User
) -> None:
    for method, url in _urls(job):
        response = getattr(client, method)(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/accounts/login/"), url
    client.force_login(outsider)
    for method, url in _urls(job):
        assert getattr(client, method)(url).status_code == 404, (method, url)
    # Nor can they reach the job through their own brand's URLs.
    assert client.get(f"/b/rival/imports/{job.pk}/").status_code == 404
