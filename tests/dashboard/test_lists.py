"""Dashboard audiences and signup forms: lists, create/edit, archive, preview, embed code."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from audiences import consent, lists
from audiences.consent import Evidence
from audiences.models import Audience, AuditEvent, Brand, ConsentEvent, Membership, SignupForm, Subscriber
from audiences.signup_forms import create_form
from tests.conftest import WORDING, db_snapshot

FORM_EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def as_editor(client: Client, editor: User) -> Client:
    client.force_login(editor)
    return client


def _actions() -> list[str]:
    return list(AuditEvent.objects.order_by("id").values_list("action", flat=True))


def _form_post(form: SignupForm, **overrides: Any) -> dict[str, Any]:
    """The edit page's POST for ``form`` as it is, with ``overrides``."""
    data: dict[str, Any] = {
        "title": form.title,
        "slug": form.slug,
        "intro": form.intro,
        "audiences": [a.pk for a in form.audiences.filter(archived_at__isnull=True)],
        "ask_name": "on" if form.ask_name else "",
        "thank_you_url": form.thank_you_url,
        "allowed_origins": form.allowed_origins,
        "is_active": "on" if form.is_active else "",
        "wording": form.current_wording().text,
    }
    data.update(overrides)
    return {k: v for k, v in data.items() if v != ""}


def _subscribe(form: SignupForm, email: str, audiences: list[Audience]) -> Subscriber:
    consent.request_subscription(form=form, email=email, audiences=audiences, evidence=FORM_EVIDENCE)
    return Subscriber.objects.get(email=email)


# --- Audience list -------------------------------------------------------------------


def test_it_lists_audiences_with_subscriptions_per_status(
    client: Client, viewer: User, signup_form: SignupForm, news: Audience, offers: Audience
) -> None:
    _subscribe(signup_form, "pending@example.com", [news, offers])
    active = _subscribe(signup_form, "active@example.com", [news])
    consent.confirm(subscriber=active, audience_ids=[news.pk], evidence=FORM_EVIDENCE)
    gone = _subscribe(signup_form, "gone@example.com", [news])
    consent.confirm(subscriber=gone, audience_ids=[news.pk], evidence=FORM_EVIDENCE)
    consent.unsubscribe(subscriber=gone, audience_ids=None, evidence=FORM_EVIDENCE)
    lists.archive_audience(audience=offers, user=None)
    client.force_login(viewer)

    response = client.get("/b/acme/audiences/")

    assert response.status_code == 200
    rows = {a.name: (a.active_count, a.pending_count, a.inactive_count) for a in response.context["audiences"]}
    assert rows == {"Weekly news": (1, 1, 1), "Offers": (0, 1, 0)}
    assert [a.name for a in response.context["audiences"]] == ["Weekly news", "Offers"]  # archived last
    assert "Archived" in response.content.decode()
    # Viewers get no change buttons.
    assert "/archive/" not in response.content.decode()
    assert "/audiences/new/" not in response.content.decode()


def test_the_audience_list_runs_the_same_queries_for_two_or_twenty_audiences(
    client: Client,
    owner: User,
    brand: Brand,
    signup_form: SignupForm,
    news: Audience,
    django_assert_max_num_queries: Any,
) -> None:
    _subscribe(signup_form, "a@example.com", [news])
    client.force_login(owner)
    with CaptureQueriesContext(connection) as few:
        assert client.get("/b/acme/audiences/").status_code == 200
    for i in range(18):
        audience = lists.create_audience(brand=brand, user=owner, name=f"List {i}")
        create_form(brand=brand, slug=f"f{i}", title="F", audiences=[audience], wording=WORDING)
        _subscribe(SignupForm.objects.get(slug=f"f{i}"), f"p{i}@example.com", [audience])

    # Session, user, membership, the one grouped query, the brand switcher's memberships, the sending-alert banner.
    with django_assert_max_num_queries(6):
        response = client.get("/b/acme/audiences/")

    assert len(response.context["audiences"]) == 20
    assert len(few.captured_queries) == 6
    counting = [q["sql"] for q in few.captured_queries if "GROUP BY" in q["sql"]]
    assert len(counting) == 1


# --- Audience create / edit / archive ---------------------------------------------------


def test_an_editor_creates_an_audience(as_editor: Client, brand: Brand, editor: User) -> None:
    response = as_editor.post(
        "/b/acme/audiences/new/", {"name": " Tea tips ", "description": "Brewing advice.", "is_public": "on"}
    )

    assert response.status_code == 302
    assert response["Location"] == "/b/acme/audiences/"
    audience = Audience.objects.get()
    assert (audience.brand, audience.name, audience.description, audience.is_public) == (
        brand,
        "Tea tips",
        "Brewing advice.",
        True,
    )
    event = AuditEvent.objects.get()
    assert (event.action, event.target, event.user) == ("audience.created", "Tea tips", editor)


def test_it_refuses_a_duplicate_audience_name_with_a_form_error(as_editor: Client, news: Audience) -> None:
    response = as_editor.post("/b/acme/audiences/new/", {"name": "weekly NEWS"})

    assert response.status_code == 400
    assert "There is already an audience called weekly NEWS." in response.content.decode()
    assert Audience.objects.count() == 1
    assert _actions() == []


def test_the_same_name_is_fine_in_another_brand(as_editor: Client, other_brand: Brand) -> None:
    Audience.objects.create(brand=other_brand, name="Weekly news")
    assert as_editor.post("/b/acme/audiences/new/", {"name": "Weekly news"}).status_code == 302
    assert Audience.objects.filter(name="Weekly news").count() == 2


def test_an_empty_post_is_a_form_error(as_editor: Client, brand: Brand) -> None:
    response = as_editor.post("/b/acme/audiences/new/", {})
    assert response.status_code == 400
    assert response.context["form"].errors["name"]
    assert not Audience.objects.exists()


def test_an_editor_edits_an_audience(as_editor: Client, news: Audience) -> None:
    response = as_editor.post(f"/b/acme/audiences/{news.pk}/", {"name": "Friday news", "description": "Every Friday."})

    assert response.status_code == 302
    news.refresh_from_db()
    assert (news.name, news.description, news.is_public) == ("Friday news", "Every Friday.", False)
    event = AuditEvent.objects.get()
    assert (event.action, event.target) == ("audience.updated", "Weekly news")
    assert event.details == {"fields": ["is_public", "name"], "name": "Friday news"}


def test_saving_an_unchanged_audience_records_nothing(as_editor: Client, news: Audience) -> None:
    data = {"name": news.name, "description": news.description, "is_public": "on"}
    assert as_editor.post(f"/b/acme/audiences/{news.pk}/", data).status_code == 302
    assert _actions() == []


def test_it_refuses_renaming_to_a_taken_name(as_editor: Client, news: Audience, offers: Audience) -> None:
    response = as_editor.post(f"/b/acme/audiences/{news.pk}/", {"name": "Offers", "is_public": "on"})

    assert response.status_code == 400
    assert "There is already an audience called Offers." in response.content.decode()
    news.refresh_from_db()
    assert news.name == "Weekly news"
    assert _actions() == []


def test_archiving_hides_the_audience_from_the_hosted_signup_page(
    as_editor: Client, signup_form: SignupForm, offers: Audience
) -> None:
    assert "Offers" in as_editor.get("/s/acme/newsletter/").content.decode()

    response = as_editor.post(f"/b/acme/audiences/{offers.pk}/archive/")

    assert response.status_code == 302
    offers.refresh_from_db()
    assert offers.archived_at is not None
    assert "Offers" not in as_editor.get("/s/acme/newsletter/").content.decode()
    assert "Offers" not in as_editor.get("/s/acme/newsletter/embed/").content.decode()
    assert _actions()[-1] == "audience.archived"
    # The form still links it, so unarchiving puts it back.
    assert signup_form.audiences.filter(pk=offers.pk).exists()


def test_archiving_twice_records_one_event(as_editor: Client, offers: Audience, signup_form: SignupForm) -> None:
    as_editor.post(f"/b/acme/audiences/{offers.pk}/archive/")
    as_editor.post(f"/b/acme/audiences/{offers.pk}/archive/")
    assert _actions().count("audience.archived") == 1


def test_unarchiving_brings_the_audience_back_on_its_forms(
    as_editor: Client, signup_form: SignupForm, offers: Audience
) -> None:
    lists.archive_audience(audience=offers, user=None)

    response = as_editor.post(f"/b/acme/audiences/{offers.pk}/unarchive/")

    assert response.status_code == 302
    offers.refresh_from_db()
    assert offers.archived_at is None
    assert "Offers" in as_editor.get("/s/acme/newsletter/").content.decode()
    assert _actions()[-1] == "audience.unarchived"


def test_it_refuses_to_archive_the_last_live_audience_of_an_active_form(
    as_editor: Client, brand: Brand, news: Audience
) -> None:
    create_form(brand=brand, slug="solo", title="Solo", audiences=[news], wording=WORDING)

    response = as_editor.post(f"/b/acme/audiences/{news.pk}/archive/", follow=True)

    news.refresh_from_db()
    assert news.archived_at is None
    assert "the only audience offered by the form Solo" in response.content.decode()
    assert "audience.archived" not in _actions()


# --- Signup form list, create -----------------------------------------------------------


def test_it_lists_the_brands_forms(client: Client, viewer: User, signup_form: SignupForm, other_brand: Brand) -> None:
    foreign = Audience.objects.create(brand=other_brand, name="Theirs")
    create_form(brand=other_brand, slug="theirs", title="Their form", audiences=[foreign], wording=WORDING)
    client.force_login(viewer)

    response = client.get("/b/acme/forms/")

    assert response.status_code == 200
    assert [f.title for f in response.context["signup_forms"]] == ["Join Acme Tea"]
    page = response.content.decode()
    assert "/s/acme/newsletter/" in page
    assert "Offers, Weekly news" in page
    assert "/forms/new/" not in page


def _new_form_data(*audiences: Audience, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "title": "Tea letter",
        "slug": "tea-letter",
        "intro": "Brewing notes.",
        "audiences": [a.pk for a in audiences],
        "ask_name": "on",
        "thank_you_url": "https://acme.example/thanks",
        "allowed_origins": "https://www.acme.example/\n\n  https://shop.acme.example  ",
        "is_active": "on",
        "wording": "Yes, send me the tea letter.",
    }
    data.update(overrides)
    return data


def test_an_editor_creates_a_form(as_editor: Client, brand: Brand, news: Audience, editor: User) -> None:
    response = as_editor.post("/b/acme/forms/new/", _new_form_data(news))

    form = SignupForm.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/b/acme/forms/{form.pk}/"
    assert (form.brand, form.slug, form.title, form.intro, form.ask_name, form.is_active) == (
        brand,
        "tea-letter",
        "Tea letter",
        "Brewing notes.",
        True,
        True,
    )
    assert list(form.audiences.all()) == [news]
    assert form.allowed_origins == "https://www.acme.example\nhttps://shop.acme.example"
    assert list(form.wordings.values_list("version", "text")) == [(1, "Yes, send me the tea letter.")]
    event = AuditEvent.objects.get()
    assert (event.action, event.target, event.user) == ("form.created", "tea-letter", editor)
    assert as_editor.get("/s/acme/tea-letter/").status_code == 200


def test_it_refuses_a_form_without_audiences(as_editor: Client, news: Audience) -> None:
    response = as_editor.post("/b/acme/forms/new/", _new_form_data())

    assert response.status_code == 400
    assert "Choose at least one audience." in response.content.decode()
    assert not SignupForm.objects.exists()


@pytest.mark.parametrize(
    "origin",
    ["www.acme.example", "https://acme.example/signup", "ftp://acme.example", "https://", "https://a.example?x=1"],
)
def test_it_refuses_an_allowed_origin_that_is_not_an_origin(as_editor: Client, news: Audience, origin: str) -> None:
    data = _new_form_data(news, allowed_origins=f"https://ok.example\n{origin}")

    response = as_editor.post("/b/acme/forms/new/", data)

    assert response.status_code == 400
    assert "is not an origin like https://www.example.com" in response.content.decode()
    assert not SignupForm.objects.exists()


def test_it_refuses_another_brands_audience(as_editor: Client, news: Audience, other_brand: Brand) -> None:
    foreign = Audience.objects.create(brand=other_brand, name="Theirs")

    response = as_editor.post("/b/acme/forms/new/", _new_form_data(news, foreign))

    assert response.status_code == 400
    assert "audiences" in response.context["settings_form"].errors
    assert not SignupForm.objects.exists()


def test_it_refuses_an_archived_audience(as_editor: Client, news: Audience, offers: Audience) -> None:
    lists.archive_audience(audience=offers, user=None)
    response = as_editor.post("/b/acme/forms/new/", _new_form_data(offers))
    assert response.status_code == 400
    assert "audiences" in response.context["settings_form"].errors


def test_it_refuses_a_slug_another_form_uses(as_editor: Client, signup_form: SignupForm, news: Audience) -> None:
    response = as_editor.post("/b/acme/forms/new/", _new_form_data(news, slug="newsletter"))

    assert response.status_code == 400
    assert "Another form already uses the address newsletter." in response.content.decode()
    assert SignupForm.objects.count() == 1
    assert _actions() == ["form.created"]  # only the fixture's own creation


# --- Signup form page: edit, wording versions, preview, embed code -------------------------


def test_an_editor_updates_a_form(as_editor: Client, signup_form: SignupForm, news: Audience, editor: User) -> None:
    data = _form_post(signup_form, title="Tea news", audiences=[news.pk], ask_name="", is_active="")

    response = as_editor.post(f"/b/acme/forms/{signup_form.pk}/", data)

    assert response.status_code == 302
    signup_form.refresh_from_db()
    assert (signup_form.title, signup_form.ask_name, signup_form.is_active) == ("Tea news", False, False)
    assert list(signup_form.audiences.all()) == [news]
    assert signup_form.wordings.count() == 1  # wording unchanged: no new version
    event = AuditEvent.objects.filter(action="form.updated").get()
    assert event.user == editor
    assert event.details == {"fields": ["ask_name", "audiences", "is_active", "title"]}
    assert "form.wording_changed" not in _actions()


def test_editing_the_wording_makes_a_new_version_and_old_events_keep_their_text(
    as_editor: Client, signup_form: SignupForm, news: Audience
) -> None:
    _subscribe(signup_form, "early@example.com", [news])
    old = signup_form.current_wording()

    response = as_editor.post(f"/b/acme/forms/{signup_form.pk}/", _form_post(signup_form, wording="New words."))

    assert response.status_code == 302
    assert list(signup_form.wordings.order_by("version").values_list("version", "text")) == [
        (1, WORDING),
        (2, "New words."),
    ]
    early = ConsentEvent.objects.get(subscriber__email="early@example.com")
    assert (early.wording, early.wording_text) == (old, WORDING)
    late = _subscribe(signup_form, "late@example.com", [news])
    assert late.consent_events.get().wording_text == "New words."
    event = AuditEvent.objects.filter(action="form.wording_changed").get()
    assert event.details == {"version": 2}
    assert "form.updated" not in _actions()
    page = as_editor.get(f"/b/acme/forms/{signup_form.pk}/").content.decode()
    assert "New words." in page
    assert WORDING.replace("'", "&#x27;") in page  # the history keeps version 1


def test_an_empty_post_to_a_form_changes_nothing(as_editor: Client, signup_form: SignupForm) -> None:
    before = db_snapshot()
    response = as_editor.post(f"/b/acme/forms/{signup_form.pk}/", {})
    assert response.status_code == 400
    assert set(response.context["settings_form"].errors) >= {"title", "slug", "audiences", "wording"}
    assert db_snapshot() == before


def test_it_refuses_to_take_another_forms_slug(as_editor: Client, signup_form: SignupForm, brand: Brand) -> None:
    other = create_form(brand=brand, slug="other", title="Other", audiences=[*signup_form.audiences.all()], wording="W")

    response = as_editor.post(f"/b/acme/forms/{other.pk}/", _form_post(other, slug="newsletter"))

    assert response.status_code == 400
    assert "Another form already uses the address newsletter." in response.content.decode()
    other.refresh_from_db()
    assert other.slug == "other"


def test_editing_a_form_refuses_another_brands_audience(
    as_editor: Client, signup_form: SignupForm, news: Audience, other_brand: Brand
) -> None:
    foreign = Audience.objects.create(brand=other_brand, name="Theirs")
    before = db_snapshot()

    response = as_editor.post(f"/b/acme/forms/{signup_form.pk}/", _form_post(signup_form, audiences=[foreign.pk]))

    assert response.status_code == 400
    assert "audiences" in response.context["settings_form"].errors
    assert db_snapshot() == before


def test_editing_a_form_keeps_its_archived_audiences_linked(
    as_editor: Client, signup_form: SignupForm, news: Audience, offers: Audience
) -> None:
    lists.archive_audience(audience=offers, user=None)

    as_editor.post(f"/b/acme/forms/{signup_form.pk}/", _form_post(signup_form, title="Renamed"))

    assert set(signup_form.audiences.all()) == {news, offers}
    lists.unarchive_audience(audience=offers, user=None)
    assert "Offers" in as_editor.get("/s/acme/newsletter/").content.decode()


def test_the_form_page_shows_a_live_preview_embed_code_and_versions(
    client: Client, viewer: User, signup_form: SignupForm
) -> None:
    client.force_login(viewer)

    response = client.get(f"/b/acme/forms/{signup_form.pk}/")

    assert response.status_code == 200
    page = response.content.decode()
    assert '<iframe class="preview"' in page
    assert 'src="/s/acme/newsletter/embed/"' in page
    assert 'href="/s/acme/newsletter/"' in page
    # Both snippets, escaped inside read-only textareas, with a copy button each.
    assert 'id="snippet-html" rows="12" readonly' in page
    assert "&lt;form action=&quot;http" in page
    assert "/s/acme/newsletter/&quot;" in page
    assert "&lt;iframe src=&quot;http" in page
    assert page.count('class="secondary copy"') == 2
    assert 'aria-live="polite"' in page
    assert "navigator.clipboard" in page
    # Viewers see the settings but no form to change them.
    assert 'name="wording"' not in page
    assert "https://www.acme.example" in page


def test_the_preview_may_be_framed_by_the_dashboard(client: Client, signup_form: SignupForm) -> None:
    response = client.get("/s/acme/newsletter/embed/")
    assert response.status_code == 200
    assert response["Content-Security-Policy"].startswith("frame-ancestors 'self'")
    assert "X-Frame-Options" not in response


def test_an_inactive_form_shows_no_preview(as_editor: Client, signup_form: SignupForm) -> None:
    as_editor.post(f"/b/acme/forms/{signup_form.pk}/", _form_post(signup_form, is_active=""))
    page = as_editor.get(f"/b/acme/forms/{signup_form.pk}/").content.decode()
    assert '<iframe class="preview"' not in page
    assert "This form is inactive" in page


def test_the_nav_links_audiences_and_forms_for_viewers(client: Client, viewer: User) -> None:
    client.force_login(viewer)
    page = client.get("/b/acme/forms/").content.decode()
    assert 'href="/b/acme/audiences/"' in page
    assert 'href="/b/acme/forms/" aria-current="page"' in page
    assert 'href="/b/acme/team/"' not in page


# --- Permissions -----------------------------------------------------------------------


@pytest.fixture
def urls(signup_form: SignupForm, news: Audience) -> dict[str, str]:
    return {
        "audiences": "/b/acme/audiences/",
        "audience_new": "/b/acme/audiences/new/",
        "audience": f"/b/acme/audiences/{news.pk}/",
        "archive": f"/b/acme/audiences/{news.pk}/archive/",
        "unarchive": f"/b/acme/audiences/{news.pk}/unarchive/",
        "forms": "/b/acme/forms/",
        "form_new": "/b/acme/forms/new/",
        "form": f"/b/acme/forms/{signup_form.pk}/",
    }


READABLE = ["audiences", "audience", "forms", "form"]
EDITORS_ONLY_PAGES = ["audience_new", "form_new"]
POSTS = ["audience_new", "audience", "archive", "unarchive", "form_new", "form"]


@pytest.mark.parametrize("persona", ["owner", "editor", "viewer"])
@pytest.mark.parametrize("name", READABLE)
def test_every_member_reads_the_pages(
    client: Client, request: Any, urls: dict[str, str], persona: str, name: str
) -> None:
    client.force_login(request.getfixturevalue(persona))
    assert client.get(urls[name]).status_code == 200


@pytest.mark.parametrize("persona", ["owner", "editor"])
@pytest.mark.parametrize("name", EDITORS_ONLY_PAGES)
def test_editors_open_the_new_pages(
    client: Client, request: Any, urls: dict[str, str], persona: str, name: str
) -> None:
    client.force_login(request.getfixturevalue(persona))
    assert client.get(urls[name]).status_code == 200


@pytest.mark.parametrize("name", EDITORS_ONLY_PAGES)
def test_a_viewer_cannot_open_the_new_pages(client: Client, viewer: User, urls: dict[str, str], name: str) -> None:
    client.force_login(viewer)
    assert client.get(urls[name]).status_code == 403


@pytest.mark.parametrize("name", POSTS)
def test_a_viewer_cannot_change_anything(client: Client, viewer: User, urls: dict[str, str], name: str) -> None:
    client.force_login(viewer)
    before = db_snapshot()
    response = client.post(urls[name], {"name": "Hijacked", "title": "Hijacked", "slug": "x", "wording": "x"})
    assert response.status_code == 403
    assert db_snapshot() == before


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("name", [*READABLE, *EDITORS_ONLY_PAGES, "archive", "unarchive"])
def test_an_outsider_gets_404(client: Client, outsider: User, urls: dict[str, str], method: str, name: str) -> None:
    client.force_login(outsider)
    before = db_snapshot()
    assert getattr(client, method)(urls[name]).status_code == 404
    assert db_snapshot() == before


@pytest.mark.parametrize("name", ["audience", "archive", "form"])
def test_another_brands_object_is_404_under_the_outsiders_own_brand(
    client: Client, outsider: User, urls: dict[str, str], name: str
) -> None:
    client.force_login(outsider)
    before = db_snapshot()
    assert client.post(urls[name].replace("/b/acme/", "/b/rival/")).status_code == 404
    assert db_snapshot() == before


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize("name", [*READABLE, *EDITORS_ONLY_PAGES, "archive"])
def test_anonymous_users_are_sent_to_log_in(client: Client, urls: dict[str, str], method: str, name: str) -> None:
    response = getattr(client, method)(urls[name])
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


@pytest.mark.parametrize("name", ["archive", "unarchive"])
def test_archive_buttons_only_take_post(as_editor: Client, urls: dict[str, str], name: str) -> None:
    assert as_editor.get(urls[name]).status_code == 405
