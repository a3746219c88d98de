"""The permission matrix: every dashboard URL, for every persona, GET and POST.

Anonymous → the login page; a member of another brand → 404 (the brand, and
every object in it, "doesn't exist"); a member whose role is too low → 403;
a member whose role is enough → anything but 403/404/5xx. The table below must
name every URL of the ``dash`` namespace: a new dashboard URL fails
``test_every_dashboard_url_is_in_the_matrix`` until it is added here.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from audiences import consent
from audiences.models import Brand, ConsentEvent, ImportJob, Invitation, Membership, SignupForm, Subscriber
from campaigns.models import Campaign, SendingAlert

V, E, OW = "viewer", "editor", "owner"
RANK = {V: 1, E: 2, OW: 3}

# url name → (object the pk names, lowest role for GET, lowest role for POST).
# Read-only pages answer POST with 405 and POST-only actions answer GET with 405,
# for whoever may reach them; either way a role below the bar gets 403 first.
MATRIX: dict[str, tuple[str | None, str, str]] = {
    "home": (None, V, V),
    "team": (None, OW, OW),
    "member_role": ("membership", OW, OW),
    "member_remove": ("membership", OW, OW),
    "invitation_revoke": ("invitation", OW, OW),
    "settings": (None, OW, OW),
    "audit": (None, OW, OW),
    "audiences": (None, V, V),
    "audience_new": (None, E, E),
    "audience": ("audience", V, E),
    "audience_archive": ("audience", E, E),
    "audience_unarchive": ("audience", E, E),
    "forms": (None, V, V),
    "form_new": (None, E, E),
    "form": ("form", V, E),
    "subscribers": (None, V, V),
    "subscribers_export": (None, E, E),
    "subscriber": ("subscriber", V, V),
    "subscriber_unsubscribe": ("subscriber", E, E),
    "subscriber_block": ("subscriber", E, E),
    "subscriber_erase": ("subscriber", E, E),
    "suppressions": (None, V, V),
    "suppressions_add": (None, E, E),
    "suppressions_export": (None, E, E),
    "imports": (None, E, E),
    "import": ("import", E, E),
    "import_status": ("import", E, E),
    "import_report": ("import", E, E),
    "import_confirmations": ("import", E, E),
    "campaigns": (None, V, V),
    "campaign_new": (None, E, E),
    "campaign_count": (None, V, V),
    "campaign": ("campaign", V, V),
    "campaign_edit": ("campaign", E, E),
    "campaign_count_for": ("campaign", V, V),
    "campaign_preview": ("campaign", V, V),
    "campaign_test": ("campaign", E, E),
    "campaign_schedule": ("campaign", E, E),
    "campaign_unschedule": ("campaign", E, E),
    "campaign_pause": ("campaign", E, E),
    "campaign_resume": ("campaign", E, E),
    "campaign_cancel": ("campaign", E, E),
    "campaign_progress": ("campaign", V, V),
    "campaign_progress_json": ("campaign", V, V),
    "deliverability": (None, V, V),
    "alert_acknowledge": ("alert", OW, OW),
}


def _dash_names() -> set[str]:
    def walk(patterns: list[Any], namespace: str) -> set[str]:
        names: set[str] = set()
        for p in patterns:
            if isinstance(p, URLResolver):
                names |= walk(p.url_patterns, p.namespace or namespace)
            elif isinstance(p, URLPattern) and namespace == "dash" and p.name:
                names.add(p.name)
        return names

    return walk(get_resolver().url_patterns, "")


def test_every_dashboard_url_is_in_the_matrix() -> None:
    assert _dash_names() == set(MATRIX)


@pytest.fixture
def viewer(brand: Brand) -> User:
    user = User.objects.create_user(username="vic@acme.example", email="vic@acme.example", password="x")
    Membership.objects.create(user=user, brand=brand, role=Membership.Role.VIEWER)
    return user


@pytest.fixture
def objects(brand: Brand, owner: User, editor: User, signup_form: SignupForm, news: Any) -> dict[str, int]:
    evidence = consent.Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)
    consent.request_subscription(form=signup_form, email="dana@example.com", audiences=[news], evidence=evidence)
    subscriber = Subscriber.objects.get()
    consent.confirm(subscriber=subscriber, audience_ids=[news.pk], evidence=evidence)
    invitation = Invitation.objects.create(
        brand=brand, email="new@acme.example", token_hash="0" * 64, invited_by=owner, expires_at="2999-01-01T00:00Z"
    )
    job = ImportJob(brand=brand, created_by=editor, file_name="people.csv", header=["email"], total_rows=1)
    job.file.save("people.csv", ContentFile(b"email\nx@example.com\n"), save=False)
    job.save()
    campaign = Campaign.objects.create(brand=brand, name="C", subject="S", html_body="<p>Hi</p>", created_by=owner)
    campaign.audiences.set([news])
    alert = SendingAlert.objects.create(
        brand=brand,
        level=SendingAlert.Level.STOP,
        day="2030-01-01",
        complaint_rate=0.004,
        bounce_rate=0,
        sent=1000,
        complaints=4,
    )
    return {
        "membership": Membership.objects.get(user=editor).pk,
        "invitation": invitation.pk,
        "audience": news.pk,
        "form": signup_form.pk,
        "subscriber": subscriber.pk,
        "import": job.pk,
        "campaign": campaign.pk,
        "alert": alert.pk,
    }


def _url(name: str, brand: Brand, objects: dict[str, int]) -> str:
    kind = MATRIX[name][0]
    kwargs: dict[str, Any] = {"brand_slug": brand.slug}
    if kind:
        kwargs["pk"] = objects[kind]
    return reverse(f"dash:{name}", kwargs=kwargs)


def _check(client: Client, method: str, url: str, persona: str, needed: str) -> None:
    response = getattr(client, method)(url)
    status = response.status_code
    where = f"{method.upper()} {url} as {persona}"
    if persona == "anonymous":
        assert status == 302, where
        assert response["Location"].startswith("/accounts/login/"), where
    elif persona == "outsider":
        assert status == 404, where
    elif RANK[persona] < RANK[needed]:
        assert status == 403, f"{where}: {status}"
    else:
        assert status not in {403, 404}, f"{where}: {status}"
        assert status < 500, f"{where}: {status}"


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_the_permission_matrix(
    client: Client,
    name: str,
    brand: Brand,
    objects: dict[str, int],
    owner: User,
    editor: User,
    viewer: User,
    outsider: User,
) -> None:
    """Personas in order of power, so a destructive POST that is allowed comes last."""
    url = _url(name, brand, objects)
    _, get_role, post_role = MATRIX[name]
    personas = [("anonymous", None), ("outsider", outsider), (V, viewer), (E, editor), (OW, owner)]
    for persona, user in personas:
        client.logout()
        if user is not None:
            client.force_login(user)
        _check(client, "get", url, persona, get_role)
    for persona, user in personas:
        client.logout()
        if user is not None:
            client.force_login(user)
        _check(client, "post", url, persona, post_role)


def test_another_brands_objects_are_404_under_your_own_brand(
    client: Client, owner: User, other_brand: Brand, objects: dict[str, int]
) -> None:
    """An owner of acme asking acme's URLs for rival's objects gets 404, never a 403."""
    rival_owner = User.objects.create_user(username="r@rival.example", email="r@rival.example", password="x")
    Membership.objects.create(user=rival_owner, brand=other_brand, role=Membership.Role.OWNER)
    client.force_login(rival_owner)
    for name, (kind, _get, _post) in MATRIX.items():
        if kind is None:
            continue
        url = reverse(f"dash:{name}", kwargs={"brand_slug": other_brand.slug, "pk": objects[kind]})
        # A POST-only action answers GET with 405 before looking anything up: that reveals nothing.
        assert client.get(url).status_code in {404, 405}, url
        assert client.post(url).status_code in {404, 405}, url
        assert 404 in {client.get(url).status_code, client.post(url).status_code}, url
