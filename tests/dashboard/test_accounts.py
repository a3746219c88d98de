"""django-allauth flows as configured for Assent: email login, mandatory verification,
password reset, TOTP MFA with recovery codes, login rate limits."""

from __future__ import annotations

import re
from typing import Any

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import format_hotp_value, hotp_value, yield_hotp_counters_from_time
from django.contrib.auth.models import User
from django.core import mail
from django.core.cache import cache
from django.test import Client

PASSWORD = "a-long-passphrase-42"


@pytest.fixture
def member(owner: User) -> User:
    owner.set_password(PASSWORD)
    owner.save()
    EmailAddress.objects.create(user=owner, email=owner.email, verified=True, primary=True)
    return owner


@pytest.fixture
def mails(django_capture_on_commit_callbacks: Any) -> Any:
    return lambda: django_capture_on_commit_callbacks(execute=True)


def login(client: Client, email: str, password: str = PASSWORD) -> Any:
    return client.post("/accounts/login/", {"login": email, "password": password})


def totp_now(secret: str) -> str:
    counter = list(yield_hotp_counters_from_time())[len(list(yield_hotp_counters_from_time())) // 2]
    return format_hotp_value(hotp_value(secret, counter))


def test_login_by_email_lands_on_the_brand(client: Client, member: User) -> None:
    response = login(client, "ALICE@acme.example")
    assert response.status_code == 302
    assert client.get(response["Location"])["Location"] == "/b/acme/"


def test_a_wrong_password_is_refused(client: Client, member: User) -> None:
    response = login(client, member.email, "wrong")
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


def test_an_unverified_address_cannot_log_in_until_verified(client: Client, member: User, mails: Any) -> None:
    EmailAddress.objects.filter(user=member).update(verified=False)
    with mails():
        response = login(client, member.email)
    assert response["Location"] == "/accounts/confirm-email/"
    assert "_auth_user_id" not in client.session
    link = re.search(r"(/accounts/confirm-email/[^/\s]+/)", str(mail.outbox[-1].body))
    assert link
    assert client.get(link.group(1)).status_code == 200  # GET shows a button; it does not verify
    assert not EmailAddress.objects.get(user=member).verified
    client.post(link.group(1))
    assert EmailAddress.objects.get(user=member).verified


def test_password_reset(client: Client, member: User, mails: Any) -> None:
    with mails():
        client.post("/accounts/password/reset/", {"email": member.email})
    link = re.search(r"http://[^/]+(/accounts/password/reset/key/\S+/)", str(mail.outbox[-1].body))
    assert link
    form_url = client.get(link.group(1))["Location"]
    client.post(form_url, {"password1": "another-long-pass-7", "password2": "another-long-pass-7"})
    client.logout()
    assert login(client, member.email, "another-long-pass-7").status_code == 302


def test_failed_logins_are_rate_limited(client: Client, member: User) -> None:
    cache.clear()
    for _ in range(6):
        login(client, member.email, "wrong")
    response = login(client, member.email)
    assert "_auth_user_id" not in client.session
    assert response.status_code in {200, 429}


def test_totp_enrolment_and_login_with_a_code_or_a_recovery_code(client: Client, member: User) -> None:
    login(client, member.email)
    # Turning on MFA asks for the password again (allauth's reauthentication).
    assert client.get("/accounts/2fa/totp/activate/").status_code == 302
    client.post("/accounts/reauthenticate/", {"password": PASSWORD})
    page = client.get("/accounts/2fa/totp/activate/")
    assert page.status_code == 200
    secret = page.context["form"].secret
    response = client.post("/accounts/2fa/totp/activate/", {"code": totp_now(secret)})
    assert response.status_code == 302
    assert Authenticator.objects.filter(user=member, type=Authenticator.Type.TOTP).exists()
    codes_page = client.get("/accounts/2fa/recovery-codes/")
    recovery_codes = codes_page.context["unused_codes"]
    assert len(recovery_codes) >= 8

    client.logout()
    cache.clear()  # forget the code used at enrolment (replay protection)
    step = login(client, member.email)
    assert step["Location"] == "/accounts/2fa/authenticate/"
    assert "_auth_user_id" not in client.session
    done = client.post("/accounts/2fa/authenticate/", {"code": totp_now(secret)})
    assert done.status_code == 302
    assert client.session["_auth_user_id"] == str(member.pk)

    client.logout()
    login(client, member.email)
    client.post("/accounts/2fa/authenticate/", {"code": recovery_codes[0]})
    assert client.session["_auth_user_id"] == str(member.pk)


def test_the_dashboard_needs_a_login(client: Client, brand: Any) -> None:
    response = client.get("/b/acme/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/b/acme/")


def test_session_cookies_are_safe(settings: Any) -> None:
    assert settings.SESSION_COOKIE_HTTPONLY
    assert settings.SESSION_COOKIE_SAMESITE == "Lax"
    assert settings.ACCOUNT_EMAIL_VERIFICATION == "mandatory"
