"""Dashboard campaign pages: list, editor, live count, preview, test send, schedule, status actions, progress."""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.core import mail
from django.core.mail import EmailMultiAlternatives
from django.test import Client

from audiences import consent
from audiences.consent import Evidence
from audiences.models import Audience, AuditEvent, Brand, ConsentEvent, Membership, SignupForm, Subscriber
from campaigns import compose, delivery
from campaigns.models import Campaign, Delivery
from tests.conftest import db_snapshot

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
HTML = "<h1>Hello {{ subscriber.first_name | default('friend') }}</h1>\n<p>News from {{ brand.name }}.</p>"


# --- Fixtures ---------------------------------------------------------------------------------


def _verified(user: User) -> User:
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return user


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return _verified(user)


@pytest.fixture
def team(owner: User, editor: User, viewer: User, outsider: User) -> dict[str, User]:
    """Everyone with a verified address, plus an unverified second address for the editor."""
    for user in (owner, editor, outsider):
        _verified(user)
    EmailAddress.objects.create(user=editor, email="bob.unverified@acme.example", verified=False)
    return {"owner": owner, "editor": editor, "viewer": viewer, "outsider": outsider}


def confirmed(
    form: SignupForm, audiences: list[Audience], email: str, name: str = "Pat Doe", **attrs: Any
) -> Subscriber:
    consent.request_subscription(form=form, email=email, audiences=audiences, evidence=EVIDENCE, name=name)
    subscriber = Subscriber.objects.get(email=email)
    consent.confirm(subscriber=subscriber, audience_ids=[a.pk for a in audiences], evidence=EVIDENCE)
    if attrs:
        Subscriber.objects.filter(pk=subscriber.pk).update(attributes=attrs)
    subscriber.refresh_from_db()
    return subscriber


@pytest.fixture
def people(signup_form: SignupForm, news: Audience, offers: Audience) -> list[Subscriber]:
    return [
        confirmed(signup_form, [news], "a@example.com", name="Ada Lovelace", city="Berlin"),
        confirmed(signup_form, [news, offers], "b@example.com", name="Bo Diddley", city="Paris"),
        confirmed(signup_form, [offers], "c@example.com", name="Cy Twombly"),
    ]


@pytest.fixture
def campaign(brand: Brand, news: Audience, owner: User) -> Campaign:
    return compose.create_campaign(
        brand=brand,
        user=owner,
        name="Weekly 1",
        subject="Hi {{ subscriber.first_name }}",
        html_body=HTML,
        audiences=[news],
    )


def _post(campaign: Campaign | None = None, /, **overrides: Any) -> dict[str, Any]:
    """The editor's POST: the campaign as it is (or a fresh one), with ``overrides``."""
    data: dict[str, Any] = {
        "name": campaign.name if campaign else "Spring news",
        "subject": campaign.subject if campaign else "Spring is here, {{ subscriber.first_name }}",
        "preheader": "",
        "from_name": "",
        "from_email": "",
        "reply_to": "",
        "html_body": campaign.html_body if campaign else HTML,
        "text_body": "",
        "send_rate": "",
        "audiences": [a.pk for a in campaign.audiences.all()] if campaign else [],
    }
    data.update(overrides)
    return data


def _actions() -> list[str]:
    return list(
        AuditEvent.objects.filter(action__startswith="campaign.").order_by("id").values_list("action", flat=True)
    )


def _url(campaign: Campaign, name: str = "") -> str:
    return f"/b/acme/campaigns/{campaign.pk}/{name}"


# --- List ---------------------------------------------------------------------------------------


def test_it_lists_campaigns_with_status_audiences_and_sent_count(
    client: Client,
    viewer: User,
    campaign: Campaign,
    people: list[Subscriber],
    owner: User,
    django_capture_on_commit_callbacks: Any,
) -> None:
    with django_capture_on_commit_callbacks(execute=True):
        delivery.schedule(campaign=campaign, user=owner)
    compose.create_campaign(brand=campaign.brand, user=owner, name="Draft two", subject="x", html_body="<p>x</p>")
    client.force_login(viewer)

    response = client.get("/b/acme/campaigns/")

    assert response.status_code == 200
    rows = {c.name: (c.status, c.sent_count, [a.name for a in c.audiences.all()]) for c in response.context["page"]}
    assert rows == {"Weekly 1": ("sent", 2, ["Weekly news"]), "Draft two": ("draft", 0, [])}
    assert b"New campaign" not in response.content  # viewers don't get the button


def test_the_list_queries_do_not_grow_with_campaigns(
    client: Client, viewer: User, brand: Brand, news: Audience, offers: Audience
) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def make(n: int) -> None:
        for i in range(n):
            compose.create_campaign(
                brand=brand, user=None, name=f"C{i}", subject="s", html_body="<p>x</p>", audiences=[news, offers]
            )

    client.force_login(viewer)
    make(1)
    with CaptureQueriesContext(connection) as one:
        client.get("/b/acme/campaigns/")
    make(10)
    with CaptureQueriesContext(connection) as eleven:
        client.get("/b/acme/campaigns/")
    assert len(eleven.captured_queries) == len(one.captured_queries)


def test_it_offers_editors_a_new_campaign_and_the_nav_entry(client: Client, editor: User) -> None:
    client.force_login(editor)
    response = client.get("/b/acme/campaigns/")
    assert b'href="/b/acme/campaigns/new/"' in response.content
    assert b'<a href="/b/acme/campaigns/" aria-current="page">Campaigns</a>' in response.content


# --- Editor ---------------------------------------------------------------------------------------


def test_it_creates_a_draft_with_audiences_rules_and_brand_sender_defaults(
    client: Client, editor: User, news: Audience, offers: Audience
) -> None:
    client.force_login(editor)
    data = _post(
        audiences=[news.pk, offers.pk],
        send_rate="120",
        rule_0_field="attribute",
        rule_0_key="city",
        rule_0_op="in",
        rule_0_value=" Berlin, Paris ",
        rule_2_field="signed_up",
        rule_2_op="after",
        rule_2_value="2025-01-31",
    )

    response = client.post("/b/acme/campaigns/new/", data)

    campaign = Campaign.objects.get()
    assert response.status_code == 302
    assert response["Location"] == _url(campaign, "edit/")
    assert campaign.status == Campaign.Status.DRAFT
    assert set(campaign.audiences.all()) == {news, offers}
    assert campaign.segment == [
        {"field": "attributes.city", "op": "in", "value": "Berlin, Paris"},
        {"field": "signed_up", "op": "after", "value": "2025-01-31"},
    ]
    assert (campaign.send_rate, campaign.sender_email, campaign.created_by) == (120, "news@acme.example", editor)
    assert _actions() == ["campaign.created"]


def test_the_editor_shows_the_brand_sender_as_the_default(client: Client, editor: User) -> None:
    client.force_login(editor)
    response = client.get("/b/acme/campaigns/new/")
    assert response.status_code == 200
    assert 'placeholder="news@acme.example"' in response.content.decode()
    assert "Empty: the brand&#x27;s, Acme Tea." in response.content.decode()


def test_it_refuses_another_brands_audience(client: Client, editor: User, other_brand: Brand) -> None:
    theirs = Audience.objects.create(brand=other_brand, name="Theirs")
    client.force_login(editor)

    response = client.post("/b/acme/campaigns/new/", _post(audiences=[theirs.pk]))

    assert response.status_code == 400
    assert "audiences" in response.context["form"].errors
    assert not Campaign.objects.exists()


def test_it_refuses_an_archived_audience(client: Client, editor: User, news: Audience) -> None:
    from audiences import lists

    lists.archive_audience(audience=news, user=None)
    client.force_login(editor)
    response = client.post("/b/acme/campaigns/new/", _post(audiences=[news.pk]))
    assert response.status_code == 400
    assert not Campaign.objects.exists()


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"rule_1_field": "signed_up", "rule_1_op": "before", "rule_1_value": "last week"},
            "Rule 2: 'last week' is not a date",
        ),
        (
            {"rule_0_field": "language", "rule_0_op": "contains", "rule_0_value": "e"},
            "Rule 1: language can be compared",
        ),
        (
            {"rule_0_field": "attribute", "rule_0_key": "bad key!", "rule_0_op": "equals", "rule_0_value": "x"},
            "Rule 1: use an attribute name",
        ),
        ({"rule_0_field": "attribute", "rule_0_op": "equals", "rule_0_value": "x"}, "Rule 1: name the attribute"),
        ({"rule_0_field": "language", "rule_0_value": "de"}, "Rule 1: choose a comparison"),
        ({"rule_0_field": "language", "rule_0_op": "equals"}, "Rule 1: a value is needed"),
        ({"rule_0_field": "nope", "rule_0_op": "equals", "rule_0_value": "x"}, "Select a valid choice"),
    ],
)
def test_it_shows_rule_problems_on_their_row(
    client: Client, editor: User, news: Audience, row: dict[str, str], message: str
) -> None:
    client.force_login(editor)

    response = client.post("/b/acme/campaigns/new/", _post(audiences=[news.pk], **row))

    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert not Campaign.objects.exists()


def test_it_saves_a_draft_with_a_template_error_and_shows_it_with_its_line(
    client: Client, editor: User, news: Audience
) -> None:
    client.force_login(editor)
    body = "<p>one</p>\n<p>two</p>\n<p>{% if %}</p>"

    response = client.post("/b/acme/campaigns/new/", _post(audiences=[news.pk], html_body=body), follow=True)

    assert response.status_code == 200
    assert Campaign.objects.get().html_body == body  # saved anyway: scheduling is what's refused
    page = response.content.decode()
    assert 'id="id_html_body_problems"' in page
    assert "Line 3:" in page
    assert 'aria-describedby="id_html_body_problems id_html_body_helptext"' in page
    assert "Not ready to schedule yet" in page


def test_it_edits_a_draft_and_audits_the_changed_fields(
    client: Client, editor: User, campaign: Campaign, offers: Audience
) -> None:
    client.force_login(editor)
    before = campaign.updated_at

    response = client.post(_url(campaign, "edit/"), _post(campaign, subject="New subject", audiences=[offers.pk]))

    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.subject == "New subject"
    assert list(campaign.audiences.all()) == [offers]
    assert campaign.updated_at > before
    event = AuditEvent.objects.get(action="campaign.updated")
    assert (event.user, event.details["fields"]) == (editor, ["subject", "audiences"])


def test_saving_an_unchanged_draft_records_nothing(client: Client, editor: User, campaign: Campaign) -> None:
    client.force_login(editor)
    client.post(_url(campaign, "edit/"), _post(campaign))
    assert _actions() == ["campaign.created"]


def test_the_editor_keeps_rules_beyond_the_default_rows(client: Client, editor: User, campaign: Campaign) -> None:
    rules = [{"field": "language", "op": "equals", "value": "en"}] * 6
    Campaign.objects.filter(pk=campaign.pk).update(segment=rules)
    client.force_login(editor)

    response = client.get(_url(campaign, "edit/"))

    assert response.context["form"].rows == 6
    assert 'name="rule_5_value"' in response.content.decode()


def test_a_scheduled_campaign_cannot_be_edited(client: Client, editor: User, campaign: Campaign) -> None:
    delivery.schedule(campaign=campaign, user=editor, at=datetime(2099, 1, 1, tzinfo=UTC))
    client.force_login(editor)

    response = client.post(_url(campaign, "edit/"), _post(campaign, subject="Changed"))

    assert response.status_code == 302
    assert response["Location"] == _url(campaign)
    campaign.refresh_from_db()
    assert campaign.subject != "Changed"


# --- Live count -----------------------------------------------------------------------------------


def test_the_live_count_counts_unsaved_targeting(
    client: Client, editor: User, people: list[Subscriber], news: Audience, offers: Audience
) -> None:
    client.force_login(editor)
    query: dict[str, Any] = {
        "audiences": [news.pk, offers.pk],
        "rule_0_field": "attribute",
        "rule_0_key": "city",
        "rule_0_op": "is_set",
    }

    response = client.get("/b/acme/campaigns/count.json", query)

    assert response.status_code == 200
    assert response.json() == {"count": 2, "label": "2 eligible recipients now", "errors": []}
    assert client.get("/b/acme/campaigns/count.json", {"audiences": [offers.pk]}).json()["count"] == 2
    assert client.get("/b/acme/campaigns/count.json").json()["count"] == 0


def test_the_live_count_of_a_campaign_matches_its_recipients(
    client: Client, viewer: User, campaign: Campaign, people: list[Subscriber], news: Audience
) -> None:
    client.force_login(viewer)
    response = client.get(_url(campaign, "count.json"), {"audiences": [news.pk]})
    assert response.json()["count"] == delivery.recipients(campaign).count() == 2


def test_the_live_count_reports_bad_rules_and_other_brands_audiences(
    client: Client, editor: User, other_brand: Brand
) -> None:
    theirs = Audience.objects.create(brand=other_brand, name="Theirs")
    client.force_login(editor)

    bad_rule = client.get(
        "/b/acme/campaigns/count.json", {"rule_0_field": "signed_up", "rule_0_op": "after", "rule_0_value": "soon"}
    )
    other = client.get("/b/acme/campaigns/count.json", {"audiences": [theirs.pk]})

    assert bad_rule.status_code == other.status_code == 400
    assert bad_rule.json()["count"] is None
    assert "is not a date" in bad_rule.json()["errors"][0]


def test_the_campaign_page_shows_the_eligible_count(
    client: Client, viewer: User, campaign: Campaign, people: list[Subscriber]
) -> None:
    client.force_login(viewer)
    response = client.get(_url(campaign))
    assert response.status_code == 200
    assert response.context["eligible"] == 2


# --- Preview ----------------------------------------------------------------------------------------


def test_the_preview_renders_for_a_chosen_subscriber_in_a_sandbox(
    client: Client, editor: User, campaign: Campaign, people: list[Subscriber]
) -> None:
    ada = people[0]
    client.force_login(editor)

    response = client.get(_url(campaign, "preview/"), {"subscriber": ada.pk})

    assert response.status_code == 200
    page = response.content.decode()
    assert '<iframe class="mail" sandbox="" srcdoc="' in page
    srcdoc = html.unescape(page.split('srcdoc="', 1)[1].split('"', 1)[0])
    assert "Hello Ada" in srcdoc
    assert "Acme Tea, 2 Leaf Lane, Bristol BS1 1AA" in srcdoc  # the footer
    assert f"/u/{ada.pk}." in srcdoc  # ada's own unsubscribe link
    assert "<script" not in page.split("srcdoc=", 1)[1].split(">", 1)[0]
    assert response.context["rendered"].subject == "Hi Ada"
    assert "Unsubscribe:" in response.context["rendered"].text
    assert "Hello Ada" in response.context["rendered"].text  # no text body written: derived from the HTML
    choices = [value for value, _label in response.context["form"].fields["subscriber"].choices]
    assert choices == ["", str(people[1].pk), str(ada.pk)]  # eligible recipients, newest first


def test_a_viewer_previews_with_the_persons_data_but_not_their_links(
    client: Client, viewer: User, campaign: Campaign, people: list[Subscriber]
) -> None:
    ada = people[0]
    client.force_login(viewer)

    response = client.get(_url(campaign, "preview/"), {"subscriber": ada.pk})

    rendered = response.context["rendered"]
    assert "Hello Ada" in rendered.html
    assert "https://example.invalid/u/sample/" in rendered.html
    assert f"/u/{ada.pk}." not in rendered.html + rendered.text
    assert f"/p/{ada.pk}." not in rendered.html + rendered.text


def test_the_preview_finds_a_subscriber_by_address(
    client: Client, viewer: User, campaign: Campaign, people: list[Subscriber]
) -> None:
    client.force_login(viewer)
    found = client.get(_url(campaign, "preview/"), {"email": " C@Example.com "})
    missing = client.get(_url(campaign, "preview/"), {"email": "nobody@example.com"})
    assert found.context["person"] == people[2]
    assert found.context["rendered"].subject == "Hi Cy"
    assert missing.context["person"] is None
    assert "no subscriber with that address" in missing.content.decode()
    # Not a recipient of this campaign, so not among the recent ones, but the link back after a test works.
    back = client.get(_url(campaign, "preview/"), {"subscriber": people[2].pk})
    assert back.context["person"] == people[2]


def test_the_preview_never_shows_another_brands_subscriber(
    client: Client, viewer: User, campaign: Campaign, other_brand: Brand
) -> None:
    stranger = Subscriber.objects.create(brand=other_brand, email="s@example.com", name="Stranger")
    client.force_login(viewer)
    response = client.get(_url(campaign, "preview/"), {"subscriber": stranger.pk})
    assert response.context["person"] is None
    assert "Stranger" not in response.content.decode()


def test_the_preview_of_a_broken_template_shows_its_problems(client: Client, viewer: User, campaign: Campaign) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(html_body="<p>ok</p>\n{{ subscriber.name | nosuchfilter }}")
    client.force_login(viewer)

    response = client.get(_url(campaign, "preview/"))

    assert response.status_code == 200
    page = html.unescape(response.content.decode())
    assert "This campaign can't be rendered" in page
    assert "HTML body, line 2: No filter named 'nosuchfilter'." in page


# --- Test send --------------------------------------------------------------------------------------


def test_a_test_goes_to_verified_team_addresses_marked_and_not_as_a_delivery(
    client: Client,
    team: dict[str, User],
    campaign: Campaign,
    people: list[Subscriber],
    django_capture_on_commit_callbacks: Any,
) -> None:
    client.force_login(team["editor"])
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            _url(campaign, "test/"), {"to": ["bob@acme.example", "alice@acme.example"], "subscriber": people[0].pk}
        )

    assert response.status_code == 302
    assert response["Location"] == f"{_url(campaign, 'preview/')}?subscriber={people[0].pk}"
    assert sorted(m.to[0] for m in mail.outbox) == ["alice@acme.example", "bob@acme.example"]
    message = mail.outbox[0]
    assert isinstance(message, EmailMultiAlternatives)
    assert message.subject == "[Test] Hi Ada"
    assert message.extra_headers["X-Assent-Test"] == "yes"
    assert "List-Unsubscribe" not in message.extra_headers
    assert "https://example.invalid/u/sample/" in str(message.alternatives[0][0])  # inert links, not ada's
    assert not Delivery.objects.exists()
    event = AuditEvent.objects.get(action="campaign.test_sent")
    assert (event.user, event.details) == (
        team["editor"],
        {"to": ["bob@acme.example", "alice@acme.example"], "subscriber_id": people[0].pk},
    )


@pytest.mark.parametrize("address", ["charlie@rival.example", "bob.unverified@acme.example", "x@example.com"])
def test_a_test_goes_nowhere_but_verified_team_addresses(
    client: Client, team: dict[str, User], campaign: Campaign, address: str, django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(team["editor"])
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url(campaign, "test/"), {"to": [address]})

    assert response.status_code == 400
    assert mail.outbox == []
    assert not AuditEvent.objects.filter(action="campaign.test_sent").exists()


def test_the_test_form_offers_own_addresses_first_and_checked(
    client: Client, team: dict[str, User], campaign: Campaign
) -> None:
    client.force_login(team["editor"])
    response = client.get(_url(campaign, "preview/"))
    form = response.context["test_form"]
    assert [value for value, _label in form.fields["to"].choices] == [
        "bob@acme.example",
        "alice@acme.example",
        "vic@acme.example",
    ]
    assert form.initial["to"] == ["bob@acme.example"]


def test_test_sends_are_rate_limited(
    client: Client, team: dict[str, User], campaign: Campaign, django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(team["editor"])
    with django_capture_on_commit_callbacks(execute=True):
        codes = [client.post(_url(campaign, "test/"), {"to": ["bob@acme.example"]}).status_code for _ in range(11)]
    assert codes == [302] * 10 + [429]
    assert AuditEvent.objects.filter(action="campaign.test_sent").count() == 10


def test_a_test_of_a_broken_template_is_refused_with_its_problems(
    client: Client, team: dict[str, User], campaign: Campaign, django_capture_on_commit_callbacks: Any
) -> None:
    Campaign.objects.filter(pk=campaign.pk).update(html_body="{% for %}")
    client.force_login(team["editor"])
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url(campaign, "test/"), {"to": ["bob@acme.example"]})
    assert response.status_code == 400
    assert mail.outbox == []


# --- Schedule ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"postal_address": ""}, "The brand has no postal address"),
        ({"subject": "Hi\r\nBcc: x@example.com"}, "The subject contains a line break."),
        ({"html_body": "<p>fine</p>\n<p>{% if %}</p>"}, "HTML body, line 2: Expected an expression"),
        ({"html_body": "<p>No footer?</p><!-- "}, "unsubscribe link is missing"),
        # The layout's own closing tag closes one of these; the other still hides the footer.
        ({"html_body": '<div style="display: none"><div>'}, "unsubscribe link is missing"),
    ],
)
def test_scheduling_is_refused_with_the_problems_listed(
    client: Client, editor: User, campaign: Campaign, brand: Brand, change: dict[str, str], message: str
) -> None:
    if "postal_address" in change:
        Brand.objects.filter(pk=brand.pk).update(**change)
    else:
        Campaign.objects.filter(pk=campaign.pk).update(**change)
    client.force_login(editor)

    response = client.post(_url(campaign, "schedule/"), {"when": "now"})

    assert response.status_code == 400
    assert message in html.unescape(response.content.decode())
    assert message in " ".join(response.context["refused"])
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_it_schedules_in_the_brand_time_zone(
    client: Client, owner: User, editor: User, campaign: Campaign, brand: Brand
) -> None:
    from audiences import team

    team.update_settings(brand=brand, user=owner, changes={"time_zone": "Europe/Berlin"})
    client.force_login(editor)

    response = client.post(_url(campaign, "schedule/"), {"when": "later", "date": "2099-01-15", "time": "09:00"})

    assert response.status_code == 302
    assert response["Location"] == _url(campaign, "progress/")
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SCHEDULED
    assert campaign.scheduled_at == datetime(2099, 1, 15, 8, 0, tzinfo=UTC)  # CET is UTC+1 in winter
    assert AuditEvent.objects.get(action="campaign.scheduled").details == {"at": "2099-01-15T09:00:00+01:00"}
    page = client.get(_url(campaign)).content.decode()
    assert "(Europe/Berlin)" in page


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"when": "later", "date": "2099-03-29", "time": "02:30"}, "time"),  # skipped when clocks go forward in Berlin
        ({"when": "later", "date": "2020-01-01", "time": "09:00"}, "time"),  # in the past
        ({"when": "later", "time": "09:00"}, "date"),
        ({"when": "soon"}, "when"),
    ],
)
def test_a_bad_schedule_time_is_a_form_error(
    client: Client, editor: User, campaign: Campaign, brand: Brand, data: dict[str, str], field: str
) -> None:
    Brand.objects.filter(pk=brand.pk).update(time_zone="Europe/Berlin")
    client.force_login(editor)

    response = client.post(_url(campaign, "schedule/"), data)

    assert response.status_code == 400
    assert field in response.context["schedule_form"].errors
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_send_now_sends_to_the_eligible(
    client: Client, editor: User, campaign: Campaign, people: list[Subscriber], django_capture_on_commit_callbacks: Any
) -> None:
    client.force_login(editor)
    mail.outbox.clear()

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(_url(campaign, "schedule/"), {"when": "now"})

    assert response.status_code == 302
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENT
    assert sorted(Delivery.objects.values_list("subscriber__email", "status")) == [
        ("a@example.com", "sent"),
        ("b@example.com", "sent"),
    ]
    assert sorted(m.to[0] for m in mail.outbox) == ["Ada Lovelace <a@example.com>", "Bo Diddley <b@example.com>"]


def test_scheduling_a_campaign_twice_is_refused_without_a_500(client: Client, editor: User, campaign: Campaign) -> None:
    delivery.schedule(campaign=campaign, user=editor, at=datetime(2099, 1, 1, tzinfo=UTC))
    client.force_login(editor)
    response = client.post(_url(campaign, "schedule/"), {"when": "now"})
    assert response.status_code == 400
    assert response.context["refused"] == ["Only a draft can be scheduled."]


# --- Status actions ---------------------------------------------------------------------------------


def _sending(campaign: Campaign) -> Campaign:
    """A campaign mid-send: planned, nothing sent yet (batches are not run here)."""
    Campaign.objects.filter(pk=campaign.pk).update(status=Campaign.Status.SENDING)
    delivery.plan(campaign)
    campaign.refresh_from_db()
    return campaign


def test_pause_resume_and_cancel_through_the_buttons(
    client: Client, editor: User, campaign: Campaign, people: list[Subscriber]
) -> None:
    campaign = _sending(campaign)
    client.force_login(editor)

    paused = client.post(_url(campaign, "pause/"))
    campaign.refresh_from_db()
    assert (paused.status_code, campaign.status) == (302, Campaign.Status.PAUSED)

    client.post(_url(campaign, "resume/"))
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.SENDING

    cancelled = client.post(_url(campaign, "cancel/"))
    campaign.refresh_from_db()
    assert (cancelled["Location"], campaign.status) == (_url(campaign, "progress/"), Campaign.Status.CANCELLED)
    assert set(Delivery.objects.values_list("status", "reason")) == {("skipped", "cancelled")}
    assert _actions() == ["campaign.created", "campaign.paused", "campaign.resumed", "campaign.cancelled"]


def test_unschedule_returns_a_scheduled_campaign_to_draft(client: Client, editor: User, campaign: Campaign) -> None:
    delivery.schedule(campaign=campaign, user=editor, at=datetime(2099, 1, 1, tzinfo=UTC))
    client.force_login(editor)

    response = client.post(_url(campaign, "unschedule/"))

    assert response["Location"] == _url(campaign)
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


def test_an_action_the_status_does_not_allow_is_a_message_not_a_500(
    client: Client, editor: User, campaign: Campaign
) -> None:
    client.force_login(editor)

    response = client.post(_url(campaign, "pause/"), follow=True)

    assert response.status_code == 200
    assert "Only a campaign that is “Sending” can do that." in response.content.decode()
    campaign.refresh_from_db()
    assert campaign.status == Campaign.Status.DRAFT


# --- Progress ---------------------------------------------------------------------------------------


def test_progress_json_reports_the_counts(
    client: Client, viewer: User, campaign: Campaign, people: list[Subscriber], news: Audience
) -> None:
    campaign = _sending(campaign)
    consent.unsubscribe(subscriber=people[0], audience_ids=[news.pk], evidence=EVIDENCE)
    delivery.send_batch(campaign_id=campaign.pk, size=1)  # ada: unsubscribed since planning, so skipped
    client.force_login(viewer)

    data = client.get(_url(campaign, "progress.json")).json()

    assert {k: data[k] for k in ("status", "total", "sent", "skipped", "remaining", "percent", "live")} == {
        "status": "sending",
        "total": 2,
        "sent": 0,
        "skipped": 1,
        "remaining": 1,
        "percent": 50,
        "live": True,
    }
    assert data["summary"] == "Sending: 1 of 2 handled (50%), — left."


def test_the_progress_page_refreshes_itself_while_sending(
    client: Client, viewer: User, campaign: Campaign, people: list[Subscriber]
) -> None:
    campaign = _sending(campaign)
    client.force_login(viewer)

    page = client.get(_url(campaign, "progress/")).content.decode()
    stopped = client.get(_url(campaign, "progress/"), {"refresh": "0"}).content.decode()

    assert '<noscript><meta http-equiv="refresh" content="3"></noscript>' in page
    assert '<progress id="progress-bar" max="100" value="0">' in page
    assert 'aria-live="polite"' in page
    assert "http-equiv" not in stopped


def test_after_sending_the_progress_page_shows_outcomes_and_reasons(
    client: Client,
    viewer: User,
    owner: User,
    campaign: Campaign,
    people: list[Subscriber],
    news: Audience,
    django_capture_on_commit_callbacks: Any,
) -> None:
    campaign = _sending(campaign)
    consent.block(subscriber=people[0], evidence=EVIDENCE)
    delivery.send_batch(campaign_id=campaign.pk)
    delivery.finish_if_done(campaign_id=campaign.pk)
    client.force_login(viewer)

    response = client.get(_url(campaign, "progress/"))

    page = response.content.decode()
    assert response.context["progress"]["status"] == "sent"
    assert "http-equiv" not in page
    assert '<svg class="chart"' in page
    assert "<title>Sent: 1</title>" in page
    assert "<title>Skipped: 1</title>" in page
    assert response.context["reasons"] == [{"status": "Skipped", "reason": "Blocked", "n": 1}]


# --- Permissions ------------------------------------------------------------------------------------

READ = ["", "preview/", "progress/", "progress.json", "count.json"]
WRITE = ["edit/", "schedule/", "unschedule/", "pause/", "resume/", "cancel/", "test/"]


@pytest.mark.parametrize("path", ["/b/acme/campaigns/", "/b/acme/campaigns/count.json", *(f"C{p}" for p in READ)])
def test_every_member_can_read(client: Client, viewer: User, campaign: Campaign, path: str) -> None:
    client.force_login(viewer)
    response = client.get(path.replace("C", _url(campaign), 1) if path.startswith("C") else path)
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/b/acme/campaigns/new/", *(f"C{p}" for p in WRITE)])
def test_a_viewer_cannot_change_anything(client: Client, viewer: User, campaign: Campaign, path: str) -> None:
    client.force_login(viewer)
    url = path.replace("C", _url(campaign), 1) if path.startswith("C") else path
    before = db_snapshot()

    response = client.post(url, {**_post(campaign), "when": "now", "to": ["vic@acme.example"]})

    assert response.status_code == 403
    assert db_snapshot() == before


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("path", ["/b/acme/campaigns/", "/b/acme/campaigns/new/", *(f"C{p}" for p in READ + WRITE)])
def test_an_outsider_gets_404_and_anonymous_users_are_sent_to_sign_in(
    client: Client, outsider: User, campaign: Campaign, path: str, method: str
) -> None:
    url = path.replace("C", _url(campaign), 1) if path.startswith("C") else path
    anonymous = getattr(client, method)(url)
    client.force_login(outsider)
    response = getattr(client, method)(url)
    assert anonymous.status_code == 302
    assert anonymous["Location"].startswith("/accounts/login/")
    assert response.status_code == 404


def test_another_brands_campaign_is_a_404_for_an_owner(client: Client, owner: User, other_brand: Brand) -> None:
    theirs = compose.create_campaign(brand=other_brand, user=None, name="Theirs", subject="x", html_body="<p>x</p>")
    client.force_login(owner)
    for suffix in READ + WRITE:
        response = (
            client.post(f"/b/acme/campaigns/{theirs.pk}/{suffix}")
            if suffix in WRITE
            else client.get(f"/b/acme/campaigns/{theirs.pk}/{suffix}")
        )
        assert response.status_code == 404, suffix


@pytest.mark.parametrize("user", ["owner", "editor"])
def test_owners_and_editors_can_open_every_page(
    client: Client, team: dict[str, User], campaign: Campaign, user: str
) -> None:
    client.force_login(team[user])
    for url in ["/b/acme/campaigns/", "/b/acme/campaigns/new/", *(_url(campaign, p) for p in [*READ, "edit/"])]:
        assert client.get(url).status_code == 200, url


def test_the_progress_json_is_plain_json(client: Client, viewer: User, campaign: Campaign) -> None:
    client.force_login(viewer)
    response = client.get(_url(campaign, "progress.json"))
    assert response["Content-Type"] == "application/json"
    assert json.loads(response.content)["status"] == "draft"
