"""Team pages: invitations, roles, brand settings, audit log, overview, brand switching."""

from __future__ import annotations

import re
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from audiences import team
from audiences.models import AuditEvent, Brand, Invitation, Membership

NEW_ACCOUNT = {"email": "x@example.com", "password1": "pw-long-enough-1", "password2": "pw-long-enough-1"}


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="pw-12345678")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def mails(django_capture_on_commit_callbacks: Any) -> Any:
    return lambda: django_capture_on_commit_callbacks(execute=True)


def _invite(client: Client, owner: User, mails: Any, email: str = "new@acme.example", role: str = "editor") -> str:
    client.force_login(owner)
    with mails():
        response = client.post("/b/acme/team/", {"email": email, "role": role})
    assert response.status_code == 302
    match = re.search(r"(/invite/[^/\s]+/)", str(mail.outbox[-1].body))
    assert match
    return match.group(1)


def test_an_owner_invites_and_the_invitee_signs_up_verifies_and_joins(
    client: Client, owner: User, brand: Brand, mails: Any
) -> None:
    path = _invite(client, owner, mails)
    assert mail.outbox[-1].to == ["new@acme.example"]
    assert "Acme Tea" in mail.outbox[-1].subject
    invitation = Invitation.objects.get()
    assert len(invitation.token_hash) == 64  # only a hash of the token is stored
    assert invitation.token_hash not in path
    client.logout()

    # Registration is closed, but the invitation opens it for this browser.
    assert client.get("/accounts/signup/").status_code == 200
    page = client.get(path)
    assert b"Join Acme Tea" in page.content
    with mails():
        client.post(
            "/accounts/signup/",
            {"email": "new@acme.example", "password1": "a-long-passphrase-42", "password2": "a-long-passphrase-42"},
        )
    user = User.objects.get(email="new@acme.example")
    assert not Membership.objects.filter(user=user).exists()
    verify = re.search(r"(/accounts/confirm-email/[^/\s]+/)", str(mail.outbox[-1].body))
    assert verify, mail.outbox[-1].body
    client.post(verify.group(1))
    assert EmailAddress.objects.get(user=user).verified
    client.force_login(user)
    response = client.post(path)
    assert response.status_code == 302
    membership = Membership.objects.get(user=user)
    assert (membership.brand, membership.role) == (brand, Membership.Role.EDITOR)
    invitation.refresh_from_db()
    assert invitation.accepted_by == user
    assert set(AuditEvent.objects.values_list("action", flat=True)) >= {"member.invited", "member.joined"}
    # The link is single use.
    assert client.get(path).status_code == 410


def test_registration_is_closed_without_an_invitation(client: Client, db: None) -> None:
    response = client.get("/accounts/signup/")
    assert b"closed" in response.content.lower()
    client.post(
        "/accounts/signup/",
        {"email": "x@example.com", "password1": "pw-long-enough-1", "password2": "pw-long-enough-1"},
    )
    assert not User.objects.filter(email="x@example.com").exists()


def test_open_signup_setting_opens_registration(client: Client, db: None, settings: Any) -> None:
    settings.OPEN_SIGNUP = True
    client.post(
        "/accounts/signup/",
        {"email": "x@example.com", "password1": "pw-long-enough-1", "password2": "pw-long-enough-1"},
    )
    assert User.objects.filter(email="x@example.com").exists()


def test_an_invitation_needs_the_invited_address(client: Client, owner: User, editor: User, mails: Any) -> None:
    path = _invite(client, owner, mails, email="someone-else@acme.example")
    EmailAddress.objects.create(user=editor, email=editor.email, verified=True, primary=True)
    client.force_login(editor)
    client.post(path)
    assert Invitation.objects.get().accepted_at is None


def test_revoked_and_expired_invitations_are_refused(client: Client, owner: User, mails: Any) -> None:
    path = _invite(client, owner, mails)
    invitation = Invitation.objects.get()
    client.post(f"/b/acme/team/invitations/{invitation.pk}/revoke/")
    client.logout()
    assert client.get(path).status_code == 410
    assert AuditEvent.objects.filter(action="member.invitation_revoked").exists()


def test_inviting_a_current_member_is_a_form_error(client: Client, owner: User, editor: User) -> None:
    client.force_login(owner)
    response = client.post("/b/acme/team/", {"email": editor.email, "role": "viewer"})
    assert response.status_code == 400
    assert b"already on the team" in response.content


def test_roles_change_and_the_last_owner_stays(client: Client, owner: User, editor: User) -> None:
    client.force_login(owner)
    membership = Membership.objects.get(user=editor)
    client.post(f"/b/acme/team/{membership.pk}/role/", {"role": "viewer"})
    membership.refresh_from_db()
    assert membership.role == Membership.Role.VIEWER
    mine = Membership.objects.get(user=owner)
    client.post(f"/b/acme/team/{mine.pk}/role/", {"role": "editor"})
    mine.refresh_from_db()
    assert mine.role == Membership.Role.OWNER
    client.post(f"/b/acme/team/{mine.pk}/remove/")
    assert Membership.objects.filter(pk=mine.pk).exists()
    client.post(f"/b/acme/team/{membership.pk}/remove/")
    assert not Membership.objects.filter(pk=membership.pk).exists()
    actions = list(AuditEvent.objects.order_by("created_at").values_list("action", flat=True))
    assert actions == ["member.role_changed", "member.removed"]


def test_brand_settings(client: Client, owner: User, brand: Brand) -> None:
    client.force_login(owner)
    data = {
        "name": "Acme Tea Co",
        "from_name": "Acme",
        "from_email": "hello@acme.example",
        "reply_to": "",
        "postal_address": "1 Leaf Lane",
        "privacy_url": "https://acme.example/privacy",
        "default_language": "de",
        "time_zone": "Europe/Berlin",
        "frequency_limit": 2,
        "allowed_origins": "https://www.acme.example/\nhttps://shop.acme.example",
    }
    assert client.post("/b/acme/settings/", data).status_code == 302
    brand.refresh_from_db()
    assert (brand.name, brand.default_language, brand.frequency_limit) == ("Acme Tea Co", "de", 2)
    assert brand.allowed_origins == "https://www.acme.example\nhttps://shop.acme.example"
    event = AuditEvent.objects.get()
    assert event.action == "brand.settings_changed"
    assert "name" in event.details["fields"]
    bad = client.post("/b/acme/settings/", {**data, "allowed_origins": "not a url", "from_email": "nope"})
    assert bad.status_code == 400


def test_brand_origins_apply_to_every_form(client: Client, brand: Brand, signup_form: Any) -> None:
    from tests.conftest import signup_data

    Brand.objects.filter(pk=brand.pk).update(allowed_origins="https://shop.acme.example")
    response = client.post(
        "/s/acme/newsletter/", signup_data(signup_form, ts=""), HTTP_ORIGIN="https://shop.acme.example"
    )
    assert response.status_code == 303


def test_the_audit_log_lists_team_actions(client: Client, owner: User, brand: Brand) -> None:
    team.update_settings(brand=brand, user=owner, changes={"name": "Renamed"})
    client.force_login(owner)
    page = client.get("/b/acme/audit/").content.decode()
    assert "brand.settings_changed" in page
    assert owner.email in page


def test_the_overview_shows_counts_chart_and_recent_events(
    client: Client, viewer: User, signup_form: Any, news: Any
) -> None:
    from audiences import consent
    from audiences.models import ConsentEvent, Subscriber

    evidence = consent.Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
    consent.request_subscription(form=signup_form, email="a@example.com", audiences=[news], evidence=evidence)
    subscriber = Subscriber.objects.get()
    consent.confirm(subscriber=subscriber, audience_ids=[news.pk], evidence=evidence)
    client.force_login(viewer)
    page = client.get("/b/acme/").content.decode()
    assert "<svg" in page
    assert 'role="img"' in page
    assert "Confirmed signups" in page
    assert "a@example.com" in page
    assert client.get("/b/acme/?days=90").status_code == 200


def test_the_brand_picker_and_switcher(client: Client, owner: User, other_brand: Brand) -> None:
    client.force_login(owner)
    assert client.get("/dashboard/")["Location"] == "/b/acme/"
    Membership.objects.create(user=owner, brand=other_brand, role=Membership.Role.VIEWER)
    picker = client.get("/dashboard/")
    assert picker.status_code == 200
    assert b"/b/rival/" in picker.content
    assert b'href="/b/rival/"' in client.get("/b/acme/").content


@pytest.mark.parametrize("url", ["/b/acme/team/", "/b/acme/settings/", "/b/acme/audit/"])
def test_owner_pages_are_for_owners(
    client: Client, url: str, owner: User, editor: User, viewer: User, outsider: User
) -> None:
    client.force_login(owner)
    assert client.get(url).status_code == 200
    for user, status in [(editor, 403), (viewer, 403), (outsider, 404)]:
        client.force_login(user)
        assert client.get(url).status_code == status
    client.logout()
    assert client.get(url).status_code == 302


def test_another_brands_member_is_a_404(client: Client, owner: User, outsider: User, other_brand: Brand) -> None:
    theirs = Membership.objects.get(user=outsider)
    client.force_login(owner)
    assert client.post(f"/b/acme/team/{theirs.pk}/role/", {"role": "viewer"}).status_code == 404
    assert client.post(f"/b/acme/team/{theirs.pk}/remove/").status_code == 404
