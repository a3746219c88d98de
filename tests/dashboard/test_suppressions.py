"""The suppression list page: search (whole address by hash, part of an address through the
subscribers), reason filter, keyset pages, the team's block, the CSV export, who may do what,
and that no one can remove an entry."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, reverse
from django.utils import timezone

from audiences import consent, dashboard_urls, subscriber_queries, suppressions
from audiences.consent import Evidence
from audiences.models import (
    Audience,
    AuditEvent,
    Brand,
    ConsentEvent,
    Membership,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)
from audiences.signup_forms import create_form
from tests.conftest import WORDING, db_snapshot

CONSUMER = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM, ip="198.51.100.23")
PROVIDER = Evidence(actor=ConsentEvent.Actor.PROVIDER, source=ConsentEvent.Source.WEBHOOK)
LIST = "/b/acme/suppressions/"
ADD = "/b/acme/suppressions/add/"
EXPORT = "/b/acme/suppressions/export.csv"


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


def sign_up(form: SignupForm, email: str) -> Subscriber:
    """A person signs up through ``form`` for its first audience and confirms."""
    audiences = list(form.audiences.order_by("name")[:1])
    consent.request_subscription(form=form, email=email, audiences=audiences, evidence=CONSUMER)
    subscriber = Subscriber.objects.get(brand=form.brand, email=email)
    consent.confirm(subscriber=subscriber, audience_ids=[a.pk for a in audiences], evidence=CONSUMER)
    subscriber.refresh_from_db()
    return subscriber


def suppress(form: SignupForm, email: str, reason: str) -> Subscriber:
    """A confirmed subscriber, then blocked and suppressed for ``reason`` (a bounce, a complaint, …)."""
    return consent.block(subscriber=sign_up(form, email), evidence=PROVIDER, reason=reason)


def erased(form: SignupForm, email: str) -> Suppression:
    return consent.erase(subscriber=sign_up(form, email), evidence=CONSUMER)


def listed(response: Any) -> list[str]:
    """Each row's address, or the start of its hash where no address is kept."""
    return [row.email or row.email_hash[:12] for row in response.context["rows"]]


def read_csv(response: Any) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(response.streaming_content).decode()  # type: ignore[arg-type]
    return list(csv.DictReader(io.StringIO(body)))


@pytest.fixture
def entries(signup_form: SignupForm) -> dict[str, Any]:
    """A hard bounce, a complaint and an erased person, in that order (the erased one newest)."""
    bounced = suppress(signup_form, "dana@example.com", Suppression.Reason.HARD_BOUNCE)
    complained = suppress(signup_form, "carl@example.org", Suppression.Reason.COMPLAINT)
    gone = erased(signup_form, "erin@example.net")
    return {"bounced": bounced, "complained": complained, "erased": gone}


@pytest.fixture
def rival_entry(other_brand: Brand) -> Subscriber:
    audience = Audience.objects.create(brand=other_brand, name="Rival news")
    form = create_form(brand=other_brand, slug="join", title="Join Rival", audiences=[audience], wording=WORDING)
    return suppress(form, "rita@example.com", Suppression.Reason.COMPLAINT)


# --- The list ---------------------------------------------------------------------


def test_it_lists_the_brands_entries_newest_first_with_the_address_where_a_subscriber_keeps_it(
    client: Client, viewer: User, entries: dict[str, Any], rival_entry: Subscriber
) -> None:
    client.force_login(viewer)
    response = client.get(LIST)
    assert response.status_code == 200
    erin = email_hash("erin@example.net")
    assert listed(response) == [erin[:12], "carl@example.org", "dana@example.com"]
    html = response.content.decode()
    assert "rita@example.com" not in html
    assert f'<a href="/b/acme/subscribers/{entries["bounced"].pk}/">dana@example.com</a>' in html
    assert "erased — address not kept" in html
    assert f"{erin[:12]}…" in html
    assert "Hard bounce" in html
    assert "Complaint" in html
    assert '<a href="/b/acme/suppressions/" aria-current="page">Suppression list</a>' in html
    # Viewers read, but get neither the add form nor the export.
    assert ADD not in html
    assert "export.csv" not in html


def test_the_page_reads_the_addresses_in_one_query(
    client: Client, owner: User, signup_form: SignupForm, entries: dict[str, Any]
) -> None:
    for i in range(5):
        suppress(signup_form, f"more{i}@example.com", Suppression.Reason.BLOCKED)
    client.force_login(owner)
    with CaptureQueriesContext(connection) as captured:
        assert client.get(LIST).status_code == 200
    lookups = [q for q in captured if 'FROM "audiences_subscriber"' in q["sql"]]
    assert len(lookups) == 1


def test_a_whole_address_finds_its_entry_by_hash_even_when_erased(
    client: Client, owner: User, entries: dict[str, Any]
) -> None:
    client.force_login(owner)
    response = client.get(LIST, {"q": "  Erin@Example.NET "})
    assert response.status_code == 200
    assert listed(response) == [email_hash("erin@example.net")[:12]]
    assert listed(client.get(LIST, {"q": "dana@example.com"})) == ["dana@example.com"]
    assert listed(client.get(LIST, {"q": "nobody@example.com"})) == []


def test_a_part_of_an_address_matches_the_subscribers_addresses(
    client: Client, owner: User, entries: dict[str, Any], signup_form: SignupForm
) -> None:
    sign_up(signup_form, "danny@example.com")  # not suppressed: not listed, however well it matches
    client.force_login(owner)
    assert listed(client.get(LIST, {"q": "DAN"})) == ["dana@example.com"]
    assert listed(client.get(LIST, {"q": "example.org"})) == ["carl@example.org"]
    # Erased people have no address left to match, only the start of their hash.
    assert listed(client.get(LIST, {"q": "erin"})) == []
    erin = email_hash("erin@example.net")
    assert listed(client.get(LIST, {"q": erin[:10]})) == [erin[:12]]


def test_it_filters_by_reason_and_combines_with_the_search(
    client: Client, owner: User, entries: dict[str, Any]
) -> None:
    client.force_login(owner)
    assert listed(client.get(LIST, {"reason": "complaint"})) == ["carl@example.org"]
    assert listed(client.get(LIST, {"reason": "hard_bounce", "q": "example"})) == ["dana@example.com"]
    assert listed(client.get(LIST, {"reason": "complaint", "q": "dana@example.com"})) == []


@pytest.mark.parametrize(
    "query", [{"q": "da"}, {"reason": "forgiven"}, {"after": "not-a-cursor"}, {"before": "12_x"}, {"q": "x" * 300}]
)
def test_bad_searches_are_a_400_with_a_message_not_a_500(
    client: Client, viewer: User, entries: dict[str, Any], query: dict[str, str]
) -> None:
    client.force_login(viewer)
    response = client.get(LIST, query)
    assert response.status_code == 400
    assert 'class="errorlist' in response.content.decode()


def test_pages_neither_skip_nor_repeat_entries_added_at_the_same_time(
    client: Client, owner: User, brand: Brand, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_queries, "PAGE_SIZE", 2)
    same = timezone.now()
    for i in range(5):
        Suppression.objects.create(
            brand=brand, email_hash=email_hash(f"p{i}@example.com"), reason="team", created_at=same
        )
    client.force_login(owner)
    seen: list[str] = []
    response = client.get(LIST)
    while True:
        seen += [row.email_hash for row in response.context["rows"]]
        older = response.context["older"]
        if not older:
            break
        response = client.get(LIST, {"after": older})
    assert len(seen) == 5
    assert set(seen) == {email_hash(f"p{i}@example.com") for i in range(5)}
    back = client.get(LIST, {"before": response.context["newer"]})
    assert [row.email_hash for row in back.context["rows"]] == seen[2:4]


# --- The team's block ---------------------------------------------------------------


def test_an_editor_suppresses_new_addresses_and_blocks_a_subscriber_with_one(
    client: Client, editor: User, signup_form: SignupForm, offers: Audience
) -> None:
    dana = sign_up(signup_form, "dana@example.com")
    client.force_login(editor)
    response = client.post(
        ADD,
        {"emails": "Dana@Example.com\nnew@example.org, other@example.net;new@example.org", "note": "Asked by phone"},
        REMOTE_ADDR="203.0.113.8",
        follow=True,
    )
    assert response.redirect_chain == [(LIST, 302)]
    entries = Suppression.objects.filter(brand=dana.brand).order_by("email_hash")
    expected = sorted(email_hash(a) for a in ["dana@example.com", "new@example.org", "other@example.net"])
    assert [e.email_hash for e in entries] == expected
    assert {(e.reason, e.note) for e in entries} == {(Suppression.Reason.TEAM, "Asked by phone")}
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert not dana.subscriptions.filter(status=Subscription.Status.ACTIVE).exists()
    event = ConsentEvent.objects.get(subscriber=dana, kind=ConsentEvent.Kind.BLOCKED)
    assert (event.actor, event.source, event.actor_user, event.ip) == (
        ConsentEvent.Actor.TEAM,
        ConsentEvent.Source.DASHBOARD,
        editor,
        "203.0.113.8",
    )
    assert event.details["reason"] == Suppression.Reason.TEAM
    assert [a["name"] for a in event.audiences] == [offers.name]  # the subscription the block ended
    audit = AuditEvent.objects.get(action="suppressions.added")
    assert audit.user == editor
    assert audit.details["note"] == "Asked by phone"
    assert sorted(audit.details["added"]) == expected
    assert audit.details["blocked_subscribers"] == [dana.pk]
    # The audit log keeps hashes: the list does not keep addresses, and neither does its trail.
    assert "example" not in f"{audit.target} {audit.details}"
    text = [str(m) for m in response.context["messages"]]
    assert text == [
        "3 addresses added to the suppression list: dana@example.com, new@example.org, other@example.net.",
        "1 subscriber is now blocked: dana@example.com.",
    ]
    assert set(listed(response)) == {
        "dana@example.com",
        email_hash("new@example.org")[:12],
        email_hash("other@example.net")[:12],
    }


def test_one_invalid_address_adds_nothing_and_names_every_invalid_one(
    client: Client, owner: User, signup_form: SignupForm
) -> None:
    sign_up(signup_form, "dana@example.com")
    client.force_login(owner)
    before = db_snapshot()
    response = client.post(ADD, {"emails": "dana@example.com\nnot-an-address\nbob@@example.com", "note": "x"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "These are not valid email addresses: not-an-address, bob@@example.com. Nothing was added." in html
    assert 'aria-invalid="true"' in html
    assert db_snapshot() == before


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"emails": " , \n ", "note": "x"}, "Enter at least one address."),
        ({"emails": "a@example.com", "note": ""}, "This field is required."),
        ({"emails": "\n".join(f"p{i}@example.com" for i in range(1001)), "note": "x"}, "add at most 1000 at a time"),
    ],
)
def test_the_form_refuses_empty_or_oversized_input(
    client: Client, editor: User, brand: Brand, data: dict[str, str], error: str
) -> None:
    client.force_login(editor)
    before = db_snapshot()
    response = client.post(ADD, data)
    assert response.status_code == 400
    assert error in response.content.decode()
    assert db_snapshot() == before


def test_already_suppressed_addresses_keep_their_entry_and_are_reported(
    client: Client, owner: User, signup_form: SignupForm, entries: dict[str, Any]
) -> None:
    client.force_login(owner)
    bounce = Suppression.objects.get(email_hash=email_hash("dana@example.com"))
    response = client.post(ADD, {"emails": "dana@example.com erin@example.net", "note": "again"}, follow=True)
    assert response.status_code == 200
    bounce.refresh_from_db()
    # The team's block makes the bounce permanent (a new opt-in no longer lifts it), in the consent log too.
    assert (bounce.reason, bounce.note) == (Suppression.Reason.TEAM, "again")
    assert Suppression.objects.get(email_hash=email_hash("erin@example.net")).reason == Suppression.Reason.ERASED
    assert Suppression.objects.count() == 3
    event = ConsentEvent.objects.get(actor=ConsentEvent.Actor.TEAM)
    assert (event.subscriber, event.kind, event.details["reason"]) == (entries["bounced"], "blocked", "team")
    text = [str(m) for m in response.context["messages"]]
    assert text == ["2 addresses were already on the list and keep their entries: dana@example.com, erin@example.net."]


def test_a_listed_address_of_someone_not_blocked_blocks_them(
    client: Client, owner: User, brand: Brand, signup_form: SignupForm
) -> None:
    """Whatever put the entry there without blocking the person, the team's block does."""
    dana = sign_up(signup_form, "dana@example.com")
    Suppression.objects.create(brand=brand, email_hash=dana.email_hash, reason=Suppression.Reason.SOFT_BOUNCE)
    client.force_login(owner)
    client.post(ADD, {"emails": "dana@example.com", "note": "blocked by hand"})
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert Suppression.objects.get().reason == Suppression.Reason.TEAM


def test_the_add_page_explains_and_labels_its_fields(client: Client, editor: User, brand: Brand) -> None:
    client.force_login(editor)
    html = client.get(ADD).content.decode()
    assert '<label for="id_emails">Addresses</label>' in html
    assert '<label for="id_note">Why</label>' in html
    assert 'aria-describedby="id_emails_helptext"' in html
    assert "cannot be removed" in html


# --- Export -----------------------------------------------------------------------


def test_the_export_streams_the_filtered_entries_with_addresses_where_known(
    client: Client, editor: User, entries: dict[str, Any], rival_entry: Subscriber
) -> None:
    client.force_login(editor)
    response = client.get(EXPORT)
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="acme-suppressions-')
    rows = read_csv(response)
    assert list(rows[0]) == suppressions.EXPORT_COLUMNS
    assert [(r["email"], r["email_hash"], r["reason"]) for r in rows] == [
        ("", email_hash("erin@example.net"), "erased"),
        ("carl@example.org", email_hash("carl@example.org"), "complaint"),
        ("dana@example.com", email_hash("dana@example.com"), "hard_bounce"),
    ]
    entry = Suppression.objects.get(email_hash=email_hash("dana@example.com"))
    assert rows[2]["created_at"] == entry.created_at.isoformat()
    filtered = read_csv(client.get(EXPORT, {"reason": "complaint"}))
    assert [r["email"] for r in filtered] == ["carl@example.org"]
    audits = AuditEvent.objects.filter(action="suppressions.exported").order_by("pk")
    assert [a.details for a in audits] == [{"q": "", "reason": ""}, {"q": "", "reason": "complaint"}]


def test_exported_notes_cannot_run_as_spreadsheet_formulas(client: Client, owner: User, brand: Brand) -> None:
    client.force_login(owner)
    client.post(ADD, {"emails": "eve@example.com", "note": '=HYPERLINK("http://evil.example")'})
    (row,) = read_csv(client.get(EXPORT))
    assert row["note"] == '\'=HYPERLINK("http://evil.example")'


def test_the_export_reads_in_chunks_with_one_address_query_each(
    client: Client, owner: User, brand: Brand, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(suppressions, "EXPORT_CHUNK_SIZE", 3)
    for i in range(7):
        Suppression.objects.create(brand=brand, email_hash=email_hash(f"c{i}@example.com"), reason="team")
    client.force_login(owner)
    with CaptureQueriesContext(connection) as captured:
        rows = read_csv(client.get(EXPORT))
    assert len(rows) == 7
    lookups = [q for q in captured if 'FROM "audiences_subscriber"' in q["sql"]]
    assert len(lookups) == 3  # ceil(7 / 3) chunks


# --- Nobody removes an entry ------------------------------------------------------------


def _named_patterns(patterns: list[Any]) -> list[URLPattern]:
    found: list[URLPattern] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _named_patterns(pattern.url_patterns)
        elif pattern.name:
            found.append(pattern)
    return found


def test_no_dashboard_url_removes_or_changes_an_entry(owner: User, entries: dict[str, Any], brand: Brand) -> None:
    """Whatever an owner sends to any dashboard URL, with any method, every entry stays as it was."""
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    before = list(Suppression.objects.order_by("pk").values())
    entry = Suppression.objects.order_by("pk").first()
    assert entry is not None
    data = {"pk": entry.pk, "id": entry.pk, "email_hash": entry.email_hash, "action": "delete", "delete": "1"}
    for pattern in _named_patterns(dashboard_urls.urlpatterns):
        kwargs: dict[str, Any] = {"brand_slug": brand.slug}
        for name, converter in pattern.pattern.converters.items():
            kwargs[name] = entry.pk if converter.regex == "[0-9]+" else "x"
        url = reverse(f"dash:{pattern.name}", kwargs=kwargs)
        client.post(url, data)
        client.delete(url)
        assert list(Suppression.objects.order_by("pk").values()) == before, url


def test_the_admin_cannot_add_change_or_delete_entries(client: Client, entries: dict[str, Any]) -> None:
    admin = User.objects.create_superuser(username="root@example.com", email="root@example.com", password="x")
    client.force_login(admin)
    entry = Suppression.objects.order_by("pk").first()
    assert entry is not None
    assert client.get("/admin/audiences/suppression/").status_code == 200
    assert client.get("/admin/audiences/suppression/add/").status_code == 403
    assert client.post(f"/admin/audiences/suppression/{entry.pk}/delete/", {"post": "yes"}).status_code == 403
    changelist = client.post(
        "/admin/audiences/suppression/", {"action": "delete_selected", "_selected_action": [entry.pk], "post": "yes"}
    )
    assert changelist.status_code in {200, 302, 403}
    assert Suppression.objects.count() == 3


# --- Who may do what ------------------------------------------------------------------


def test_a_viewer_reads_but_cannot_add_or_export(client: Client, viewer: User, entries: dict[str, Any]) -> None:
    client.force_login(viewer)
    before = db_snapshot()
    assert client.get(LIST).status_code == 200
    assert client.get(ADD).status_code == 403
    assert client.post(ADD, {"emails": "x@example.com", "note": "x"}).status_code == 403
    assert client.get(EXPORT).status_code == 403
    assert db_snapshot() == before


def test_an_outsider_gets_404_everywhere(client: Client, outsider: User, entries: dict[str, Any]) -> None:
    client.force_login(outsider)
    before = db_snapshot()
    for method, url in [("get", LIST), ("get", ADD), ("post", ADD), ("get", EXPORT)]:
        assert getattr(client, method)(url, {"emails": "x@example.com", "note": "x"}).status_code == 404, url
    assert db_snapshot() == before
