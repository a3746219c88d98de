"""Subscriber pages: the list (search, filters, keyset pages), a person's record and
consent evidence, the team's actions (unsubscribe, block, erase), the CSV export,
and who may do what."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.http import StreamingHttpResponse
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import URLPattern, URLResolver, reverse
from django.utils import timezone

from audiences import consent, dashboard_urls, subscriber_queries
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

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/126.0"
EVIDENCE = Evidence(
    actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM, ip="198.51.100.23", user_agent=BROWSER
)
LIST = "/b/acme/subscribers/"
EXPORT = "/b/acme/subscribers/export.csv"


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


def sign_up(
    form: SignupForm,
    email: str,
    *,
    name: str = "",
    audiences: list[Audience] | None = None,
    confirm: bool = True,
) -> Subscriber:
    """A person signs up through ``form`` and, unless ``confirm=False``, confirms."""
    chosen = audiences or list(form.audiences.order_by("name")[:1])
    consent.request_subscription(form=form, email=email, name=name, audiences=chosen, evidence=EVIDENCE)
    subscriber = Subscriber.objects.get(brand=form.brand, email=email)
    if confirm:
        consent.confirm(subscriber=subscriber, audience_ids=[a.pk for a in chosen], evidence=EVIDENCE)
    subscriber.refresh_from_db()
    return subscriber


@pytest.fixture
def dana(signup_form: SignupForm, news: Audience) -> Subscriber:
    """Confirmed for Weekly news, with an attribute."""
    subscriber = sign_up(signup_form, "dana@example.com", name="Dana Scully", audiences=[news])
    Subscriber.objects.filter(pk=subscriber.pk).update(attributes={"city": "Bristol", "plan": {"tier": "gold"}})
    subscriber.refresh_from_db()
    return subscriber


@pytest.fixture
def rival_subscriber(other_brand: Brand) -> Subscriber:
    audience = Audience.objects.create(brand=other_brand, name="Rival news")
    form = create_form(brand=other_brand, slug="join", title="Join Rival", audiences=[audience], wording=WORDING)
    return sign_up(form, "dana@example.com", name="Dana at Rival")


def emails(response: Any) -> list[str]:
    return [s.email for s in response.context["rows"]]


def read_csv(response: Any) -> list[dict[str, str]]:
    assert isinstance(response, StreamingHttpResponse)
    body = b"".join(response.streaming_content).decode()  # type: ignore[arg-type]
    return list(csv.DictReader(io.StringIO(body)))


def team_event(subscriber: Subscriber, kind: ConsentEvent.Kind) -> ConsentEvent:
    return ConsentEvent.objects.get(subscriber=subscriber, kind=kind)


# --- The list ---------------------------------------------------------------------


def test_it_lists_the_brands_subscribers_newest_first(
    client: Client, viewer: User, signup_form: SignupForm, rival_subscriber: Subscriber
) -> None:
    older = sign_up(signup_form, "old@example.com")
    newer = sign_up(signup_form, "new@example.com")
    Subscriber.objects.filter(pk=older.pk).update(created_at=timezone.now() - timedelta(days=3))
    client.force_login(viewer)
    response = client.get(LIST)
    assert response.status_code == 200
    assert emails(response) == [newer.email, older.email]
    html = response.content.decode()
    assert "Dana at Rival" not in html
    assert f'href="/b/acme/subscribers/{newer.pk}/"' in html
    assert "2 subscribers" in html
    assert '<a href="/b/acme/subscribers/" aria-current="page">Subscribers</a>' in html
    # Viewers read, but get no export link.
    assert "export.csv" not in html


def test_it_searches_a_part_of_the_address_or_the_name_ignoring_case(
    client: Client, owner: User, signup_form: SignupForm
) -> None:
    sign_up(signup_form, "dana.scully@fbi.example", name="Dana Scully")
    sign_up(signup_form, "fox@fbi.example", name="Fox Mulder")
    sign_up(signup_form, "walter@skinner.example", name="Walter")
    client.force_login(owner)
    assert set(emails(client.get(LIST, {"q": "FBI.exa"}))) == {"dana.scully@fbi.example", "fox@fbi.example"}
    assert emails(client.get(LIST, {"q": "mulder"})) == ["fox@fbi.example"]
    assert emails(client.get(LIST, {"q": "dana"})) == ["dana.scully@fbi.example"]
    assert emails(client.get(LIST, {"q": "  Walt "})) == ["walter@skinner.example"]
    # LIKE wildcards are literal characters.
    assert emails(client.get(LIST, {"q": "%%%"})) == []
    assert emails(client.get(LIST, {"q": "___"})) == []


def test_a_search_needs_three_characters(client: Client, owner: User, dana: Subscriber) -> None:
    client.force_login(owner)
    response = client.get(LIST, {"q": "da"})
    assert response.status_code == 400
    assert "Type at least 3 characters to search." in response.content.decode()


def test_it_filters_by_status(client: Client, owner: User, signup_form: SignupForm) -> None:
    sign_up(signup_form, "yes@example.com")
    sign_up(signup_form, "maybe@example.com", confirm=False)
    client.force_login(owner)
    assert emails(client.get(LIST, {"status": "pending"})) == ["maybe@example.com"]
    assert emails(client.get(LIST, {"status": "confirmed"})) == ["yes@example.com"]


def test_it_filters_by_active_subscription_to_an_audience(
    client: Client, owner: User, signup_form: SignupForm, news: Audience, offers: Audience
) -> None:
    both = sign_up(signup_form, "both@example.com", audiences=[news, offers])
    sign_up(signup_form, "news@example.com", audiences=[news])
    sign_up(signup_form, "pending@example.com", audiences=[offers], confirm=False)
    left = sign_up(signup_form, "left@example.com", audiences=[offers])
    consent.unsubscribe(subscriber=left, audience_ids=None, evidence=EVIDENCE)
    client.force_login(owner)
    assert emails(client.get(LIST, {"audience": offers.pk})) == [both.email]
    assert set(emails(client.get(LIST, {"audience": news.pk}))) == {both.email, "news@example.com"}


def test_it_filters_by_signup_date_with_both_days_included(
    client: Client, owner: User, signup_form: SignupForm
) -> None:
    now = timezone.now()
    for days in (10, 5, 4, 1):
        person = sign_up(signup_form, f"d{days}@example.com")
        Subscriber.objects.filter(pk=person.pk).update(created_at=now - timedelta(days=days))
    start = (timezone.localtime(now) - timedelta(days=5)).date()
    end = (timezone.localtime(now) - timedelta(days=4)).date()
    client.force_login(owner)
    found = emails(client.get(LIST, {"created_from": start.isoformat(), "created_to": end.isoformat()}))
    assert found == ["d4@example.com", "d5@example.com"]
    assert emails(client.get(LIST, {"created_from": end.isoformat()})) == ["d1@example.com", "d4@example.com"]


def test_it_filters_by_source(client: Client, owner: User, signup_form: SignupForm) -> None:
    form_person = sign_up(signup_form, "form@example.com")
    api_person = sign_up(signup_form, "api@example.com")
    Subscriber.objects.filter(pk=api_person.pk).update(source=ConsentEvent.Source.API)
    client.force_login(owner)
    assert emails(client.get(LIST, {"source": "api"})) == [api_person.email]
    assert emails(client.get(LIST, {"source": "form"})) == [form_person.email]


def test_the_filters_combine(client: Client, owner: User, signup_form: SignupForm) -> None:
    sign_up(signup_form, "anna@one.example")
    sign_up(signup_form, "anna@two.example", confirm=False)
    client.force_login(owner)
    response = client.get(LIST, {"q": "anna", "status": "pending"})
    assert emails(response) == ["anna@two.example"]
    assert "Clear filters" in response.content.decode()
    # No exact total is computed for a filtered set.
    assert response.context["total"] is None


def test_cursor_pages_neither_skip_nor_repeat_rows_with_the_same_signup_time(
    client: Client, owner: User, signup_form: SignupForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_queries, "PAGE_SIZE", 3)
    people = [sign_up(signup_form, f"p{i:02}@example.com") for i in range(11)]
    same = timezone.now() - timedelta(hours=1)
    # Seven share one signup time, so only the id can order them; they straddle page edges.
    Subscriber.objects.filter(pk__in=[p.pk for p in people[2:9]]).update(created_at=same)
    expected = list(Subscriber.objects.order_by("-created_at", "-pk").values_list("email", flat=True))
    client.force_login(owner)

    seen: list[list[str]] = []
    response = client.get(LIST)
    while True:
        seen.append(emails(response))
        older = response.context["older"]
        if older is None:
            break
        response = client.get(LIST, {"after": older})
        assert response.status_code == 200
    assert [e for chunk in seen for e in chunk] == expected
    assert [len(chunk) for chunk in seen] == [3, 3, 3, 2]

    # And back up with "Newer": the same pages in reverse, ending without a "Newer" link.
    back: list[list[str]] = [seen[-1]]
    while response.context["newer"] is not None:
        response = client.get(LIST, {"before": response.context["newer"]})
        back.append(emails(response))
    assert back == seen[::-1]
    assert response.context["newer"] is None


def test_newer_near_the_top_shows_the_whole_first_page(
    client: Client, owner: User, signup_form: SignupForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_queries, "PAGE_SIZE", 3)
    people = [sign_up(signup_form, f"t{i}@example.com") for i in range(6)]
    client.force_login(owner)
    second = client.get(LIST, {"after": client.get(LIST).context["older"]})
    newer = second.context["newer"]
    # Two of the three people on the first page leave (erased) before "Newer" is followed.
    for person in people[-2:]:
        consent.erase(subscriber=person, evidence=EVIDENCE)
    response = client.get(LIST, {"before": newer})
    assert emails(response) == ["t3@example.com", "t2@example.com", "t1@example.com"]
    assert response.context["newer"] is None


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the estimate is PostgreSQL's planner's")
def test_a_large_brand_shows_an_estimated_total(
    client: Client, owner: User, signup_form: SignupForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_queries, "EXACT_COUNT_LIMIT", 2)
    for i in range(3):
        sign_up(signup_form, f"e{i}@example.com")
    client.force_login(owner)
    response = client.get(LIST)
    assert response.context["total"].exact is False
    assert response.context["total"].n >= 3
    assert "About " in response.content.decode()


def test_page_links_keep_the_filters(client: Client, owner: User, signup_form: SignupForm, monkeypatch: Any) -> None:
    monkeypatch.setattr(subscriber_queries, "PAGE_SIZE", 2)
    for i in range(3):
        sign_up(signup_form, f"kim{i}@example.com")
    sign_up(signup_form, "other@example.com")
    client.force_login(owner)
    response = client.get(LIST, {"q": "kim"})
    older = response.context["older"]
    assert f"?q=kim&amp;after={older}" in response.content.decode()
    assert emails(client.get(LIST, {"q": "kim", "after": older})) == ["kim0@example.com"]


@pytest.mark.parametrize(
    "params",
    [
        {"after": "not-a-cursor"},
        {"before": "12_x"},
        {"after": "99999999999999999999999_1"},
        {"created_from": "2024-02-30"},
        {"created_from": "2024-03-02", "created_to": "2024-03-01"},
        {"status": "erased"},
        {"audience": "999999"},
        {"q": "x" * 300},
    ],
)
def test_bad_filters_are_a_400_with_a_message_not_a_500(
    client: Client, owner: User, dana: Subscriber, params: dict[str, str]
) -> None:
    client.force_login(owner)
    response = client.get(LIST, params)
    assert response.status_code == 400
    assert 'class="errorlist' in response.content.decode()


def test_another_brands_audience_is_not_a_filter_choice(
    client: Client, owner: User, dana: Subscriber, rival_subscriber: Subscriber
) -> None:
    rival_audience = Audience.objects.get(brand=rival_subscriber.brand)
    client.force_login(owner)
    assert client.get(LIST, {"audience": rival_audience.pk}).status_code == 400


# --- One person's record ------------------------------------------------------------


def test_the_detail_page_shows_profile_attributes_subscriptions_evidence_and_messages(
    client: Client, viewer: User, editor: User, dana: Subscriber, signup_form: SignupForm, news: Audience
) -> None:
    client.force_login(editor)
    client.post(f"/b/acme/subscribers/{dana.pk}/unsubscribe/", REMOTE_ADDR="203.0.113.7", HTTP_USER_AGENT="Edge")
    client.force_login(viewer)
    response = client.get(f"/b/acme/subscribers/{dana.pk}/")
    assert response.status_code == 200
    html = response.content.decode()
    for text in [
        "dana@example.com",
        "Dana Scully",
        "<dt>city</dt><dd>Bristol</dd>",
        "{&quot;tier&quot;: &quot;gold&quot;}",
        "Weekly news",
        "Subscription requested",
        "Subscription confirmed",
        "Unsubscribed",
        "198.51.100.23",
        BROWSER,
        "Join Acme Tea",
        WORDING,
        "Wording shown (version 1)",
        "Team member (bob@acme.example)",
        "203.0.113.7",
        "Dashboard",
        "Confirmation request",
    ]:
        assert text in html, text
    # Viewers see no actions.
    assert "/unsubscribe/" not in html
    assert "/erase/" not in html


def test_editors_see_the_actions_but_nothing_that_confirms(client: Client, editor: User, dana: Subscriber) -> None:
    client.force_login(editor)
    html = client.get(f"/b/acme/subscribers/{dana.pk}/").content.decode()
    assert f"/b/acme/subscribers/{dana.pk}/unsubscribe/" in html
    assert f"/b/acme/subscribers/{dana.pk}/block/" in html
    assert f"/b/acme/subscribers/{dana.pk}/erase/" in html
    assert "/confirm" not in html


# --- Actions ------------------------------------------------------------------------


def test_an_editor_unsubscribes_someone_from_everything(
    client: Client, editor: User, signup_form: SignupForm, news: Audience, offers: Audience
) -> None:
    person = sign_up(signup_form, "both@example.com", audiences=[news, offers])
    client.force_login(editor)
    response = client.post(
        f"/b/acme/subscribers/{person.pk}/unsubscribe/", REMOTE_ADDR="203.0.113.7", HTTP_USER_AGENT="Edge"
    )
    assert response.status_code == 302
    assert response["Location"] == f"/b/acme/subscribers/{person.pk}/"
    person.refresh_from_db()
    assert person.status == Subscriber.Status.UNSUBSCRIBED
    assert not person.subscriptions.exclude(status=Subscription.Status.INACTIVE).exists()
    assert not Subscriber.objects.eligible(audience_ids=[news.pk, offers.pk]).exists()
    event = team_event(person, ConsentEvent.Kind.UNSUBSCRIBED)
    assert (event.actor, event.source, event.actor_user) == (
        ConsentEvent.Actor.TEAM,
        ConsentEvent.Source.DASHBOARD,
        editor,
    )
    assert (event.ip, event.user_agent) == ("203.0.113.7", "Edge")
    assert {a["name"] for a in event.audiences} == {"Weekly news", "Offers"}
    audit = AuditEvent.objects.get(action="subscriber.unsubscribed")
    assert (audit.user, audit.target, audit.details) == (editor, person.email, {"subscriber_id": person.pk})
    assert "is unsubscribed from everything" in client.get(response["Location"]).content.decode()


def test_unsubscribing_someone_with_nothing_to_end_writes_nothing(
    client: Client, owner: User, dana: Subscriber
) -> None:
    consent.unsubscribe(subscriber=dana, audience_ids=None, evidence=EVIDENCE)
    client.force_login(owner)
    before = db_snapshot()
    response = client.post(f"/b/acme/subscribers/{dana.pk}/unsubscribe/")
    assert response.status_code == 302
    assert db_snapshot() == before


def test_an_owner_blocks_someone(client: Client, owner: User, dana: Subscriber, news: Audience) -> None:
    client.force_login(owner)
    response = client.post(f"/b/acme/subscribers/{dana.pk}/block/", REMOTE_ADDR="203.0.113.8")
    assert response.status_code == 302
    dana.refresh_from_db()
    assert dana.status == Subscriber.Status.BLOCKED
    assert dana.blocked_at is not None
    assert Suppression.objects.filter(brand=dana.brand, email_hash=dana.email_hash).exists()
    assert not dana.subscriptions.filter(status=Subscription.Status.ACTIVE).exists()
    event = team_event(dana, ConsentEvent.Kind.BLOCKED)
    assert (event.actor, event.source, event.actor_user, event.ip) == (
        ConsentEvent.Actor.TEAM,
        ConsentEvent.Source.DASHBOARD,
        owner,
        "203.0.113.8",
    )
    assert AuditEvent.objects.get(action="subscriber.blocked").target == "dana@example.com"
    # Blocking twice changes nothing more.
    before = db_snapshot()
    client.post(f"/b/acme/subscribers/{dana.pk}/block/")
    assert db_snapshot() == before


def test_erasing_asks_first_and_changes_nothing_until_confirmed(client: Client, editor: User, dana: Subscriber) -> None:
    client.force_login(editor)
    before = db_snapshot()
    page = client.get(f"/b/acme/subscribers/{dana.pk}/erase/")
    assert page.status_code == 200
    assert "cannot be undone" in page.content.decode()
    wrong = client.post(f"/b/acme/subscribers/{dana.pk}/erase/", {"email": "someone@else.example"})
    assert wrong.status_code == 400
    assert "not this subscriber" in wrong.content.decode()
    assert client.post(f"/b/acme/subscribers/{dana.pk}/erase/", {}).status_code == 400
    assert db_snapshot() == before


def test_an_editor_erases_someone_after_confirming(client: Client, editor: User, dana: Subscriber) -> None:
    client.force_login(editor)
    response = client.post(f"/b/acme/subscribers/{dana.pk}/erase/", {"email": " Dana@Example.com "})
    assert response.status_code == 302
    assert response["Location"] == LIST
    assert not Subscriber.objects.filter(pk=dana.pk).exists()
    assert not ConsentEvent.objects.filter(subscriber_id=dana.pk).exists()
    suppression = Suppression.objects.get(brand=dana.brand)
    assert (suppression.email_hash, suppression.reason) == (email_hash("dana@example.com"), Suppression.Reason.ERASED)
    audit = AuditEvent.objects.get(action="subscriber.erased")
    assert audit.user == editor
    # The audit log keeps no trace of the address erasure removed.
    assert "dana" not in f"{audit.target} {audit.details}".lower()
    assert audit.details == {"subscriber_id": dana.pk, "email_hash": email_hash("dana@example.com")}
    assert client.get(f"/b/acme/subscribers/{dana.pk}/").status_code == 404


def _named_patterns(patterns: list[Any]) -> list[URLPattern]:
    found: list[URLPattern] = []
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            found += _named_patterns(pattern.url_patterns)
        elif pattern.name:
            found.append(pattern)
    return found


def _dashboard_urls(subscriber: Subscriber) -> list[str]:
    """Every dashboard URL, its parameters filled with the subscriber's brand and id."""
    urls = []
    for pattern in _named_patterns(dashboard_urls.urlpatterns):
        kwargs: dict[str, Any] = {"brand_slug": subscriber.brand.slug}
        for name, converter in pattern.pattern.converters.items():
            kwargs[name] = subscriber.pk if converter.regex == "[0-9]+" else "x"
        urls.append(reverse(f"dash:{pattern.name}", kwargs=kwargs))
    return urls


def test_no_dashboard_url_can_confirm_anyone(owner: User, signup_form: SignupForm, news: Audience) -> None:
    """Only the person's own confirmation sets "confirmed": whatever an owner sends to any
    dashboard URL about a pending person, they are not confirmed and no confirmation is recorded."""
    client = Client(raise_request_exception=False)
    client.force_login(owner)
    first = sign_up(signup_form, "first@example.com", audiences=[news], confirm=False)
    count = len(_dashboard_urls(first))
    assert f"/b/acme/subscribers/{first.pk}/" in _dashboard_urls(first)
    assert f"/b/acme/subscribers/{first.pk}/erase/" in _dashboard_urls(first)
    for index in range(count):
        # A fresh pending person for each URL, so an earlier block or erasure cannot hide a confirmation.
        person = sign_up(signup_form, f"p{index}@example.com", audiences=[news], confirm=False)
        url = _dashboard_urls(person)[index]
        data: dict[str, Any] = {
            "status": "confirmed",
            "action": "confirm",
            "confirm": "1",
            "audience_ids": [news.pk],
            "audiences": [news.pk],
            "subscriber": person.pk,
        }
        client.get(url, data)
        client.post(url, data)
        person = Subscriber.objects.filter(pk=person.pk).first() or person
        assert person.status != Subscriber.Status.CONFIRMED, url
        assert person.confirmed_at is None, url
        assert not ConsentEvent.objects.filter(kind=ConsentEvent.Kind.CONFIRMED).exists(), url
        assert not Subscription.objects.filter(status=Subscription.Status.ACTIVE).exists(), url


# --- Export -------------------------------------------------------------------------


def test_the_export_streams_the_filtered_set_with_its_consent_evidence(
    client: Client, editor: User, dana: Subscriber, signup_form: SignupForm, offers: Audience
) -> None:
    sign_up(signup_form, "pending@example.com", name='=HYPERLINK("http://evil")', confirm=False)
    consent.request_subscription(form=signup_form, email=dana.email, audiences=[offers], evidence=EVIDENCE)
    consent.confirm(subscriber=dana, audience_ids=[offers.pk], evidence=EVIDENCE)
    client.force_login(editor)
    response = client.get(EXPORT, {"status": "confirmed"})
    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="acme-subscribers-')
    rows = read_csv(response)
    assert [r["email"] for r in rows] == ["dana@example.com"]
    row = rows[0]
    confirmed = ConsentEvent.objects.filter(subscriber=dana, kind=ConsentEvent.Kind.CONFIRMED).latest("created_at")
    assert row["name"] == "Dana Scully"
    assert row["status"] == "confirmed"
    assert row["language"] == "en"
    assert row["source"] == "form"
    assert row["active_audiences"] == "Offers; Weekly news"
    assert row["created_at"] == dana.created_at.isoformat()
    assert row["confirmed_at"] == dana.confirmed_at.isoformat()
    assert row["unsubscribed_at"] == ""
    assert row["confirmed_event_at"] == confirmed.created_at.isoformat()
    assert (row["confirmed_ip"], row["confirmed_user_agent"], row["confirmed_source"]) == (
        "198.51.100.23",
        BROWSER,
        "form",
    )
    assert (row["request_form"], row["request_wording_version"], row["request_wording_text"]) == (
        "Join Acme Tea",
        "1",
        WORDING,
    )
    audit = AuditEvent.objects.get(action="subscribers.exported")
    assert audit.user == editor
    assert audit.details["status"] == "confirmed"


def test_exported_cells_cannot_run_as_spreadsheet_formulas(
    client: Client, owner: User, signup_form: SignupForm
) -> None:
    sign_up(signup_form, "eve@example.com", name='=HYPERLINK("http://evil.example")')
    client.force_login(owner)
    (row,) = read_csv(client.get(EXPORT))
    assert row["name"] == '\'=HYPERLINK("http://evil.example")'


def test_the_export_takes_the_same_number_of_queries_for_any_number_of_rows(
    client: Client, owner: User, signup_form: SignupForm
) -> None:
    client.force_login(owner)

    def queries_for_export() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as captured:
            rows = read_csv(client.get(EXPORT))
        return len(rows), len(captured)

    for i in range(2):
        sign_up(signup_form, f"few{i}@example.com")
    few, few_queries = queries_for_export()
    for i in range(10):
        sign_up(signup_form, f"many{i}@example.com", confirm=i % 2 == 0)
    many, many_queries = queries_for_export()
    assert (few, many) == (2, 12)
    assert many_queries == few_queries


def test_the_export_reads_in_chunks_with_a_bounded_number_of_queries_each(
    client: Client, owner: User, signup_form: SignupForm, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(subscriber_queries, "EXPORT_CHUNK_SIZE", 3)
    for i in range(7):
        sign_up(signup_form, f"c{i}@example.com")
    client.force_login(owner)
    with CaptureQueriesContext(connection) as captured:
        rows = read_csv(client.get(EXPORT))
    assert len(rows) == 7
    prefetches = [q for q in captured if "audiences_consentevent" in q["sql"]]
    assert len(prefetches) == 3  # ceil(7 / 3) chunks, one evidence query each


# --- Who may do what ------------------------------------------------------------------


def _view_urls(pk: int) -> list[tuple[str, str]]:
    """(method, url) for every view; the reads first."""
    base = f"/b/acme/subscribers/{pk}/"
    return [
        ("get", LIST),
        ("get", base),
        ("get", EXPORT),
        ("get", f"{base}erase/"),
        ("post", f"{base}unsubscribe/"),
        ("post", f"{base}block/"),
        ("post", f"{base}erase/"),
    ]


def test_a_viewer_reads_but_cannot_change_export_or_erase(client: Client, viewer: User, dana: Subscriber) -> None:
    client.force_login(viewer)
    before = db_snapshot()
    expected = [200, 200, 403, 403, 403, 403, 403]
    got = [getattr(client, method)(url, {"email": dana.email}).status_code for method, url in _view_urls(dana.pk)]
    assert got == expected
    assert db_snapshot() == before


@pytest.mark.parametrize("persona", ["owner", "editor"])
def test_owners_and_editors_may_use_every_view(
    client: Client, persona: str, request: pytest.FixtureRequest, dana: Subscriber
) -> None:
    client.force_login(request.getfixturevalue(persona))
    reads = [getattr(client, m)(url).status_code for m, url in _view_urls(dana.pk)[:4]]
    assert reads == [200, 200, 200, 200]
    assert client.post(f"/b/acme/subscribers/{dana.pk}/unsubscribe/").status_code == 302
    assert client.post(f"/b/acme/subscribers/{dana.pk}/block/").status_code == 302
    assert client.post(f"/b/acme/subscribers/{dana.pk}/erase/", {"email": dana.email}).status_code == 302


def test_an_outsider_gets_404_everywhere(client: Client, outsider: User, dana: Subscriber) -> None:
    client.force_login(outsider)
    before = db_snapshot()
    for method, url in _view_urls(dana.pk):
        assert getattr(client, method)(url, {"email": dana.email}).status_code == 404, (method, url)
    assert db_snapshot() == before


def test_anonymous_visitors_are_sent_to_sign_in(client: Client, dana: Subscriber) -> None:
    before = db_snapshot()
    for method, url in _view_urls(dana.pk):
        response = getattr(client, method)(url, {"email": dana.email})
        assert response.status_code == 302, (method, url)
        assert response["Location"].startswith("/accounts/login/?next="), (method, url)
    assert db_snapshot() == before


def test_another_brands_subscriber_is_a_404_on_every_view(
    client: Client, owner: User, dana: Subscriber, rival_subscriber: Subscriber
) -> None:
    client.force_login(owner)
    before = db_snapshot()
    for method, url in _view_urls(rival_subscriber.pk)[1:]:
        if url == EXPORT:
            continue
        assert getattr(client, method)(url, {"email": rival_subscriber.email}).status_code == 404, (method, url)
    assert db_snapshot() == before
    rows = read_csv(client.get(EXPORT))
    assert [r["name"] for r in rows] == ["Dana Scully"]
