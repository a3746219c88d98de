"""Every link a consumer receives: purpose-bound, subscriber-bound signed tokens.

A token is ``<subscriber id>.<signed payload>``. The signature's salt names the
purpose, the subscriber and the subscriber's ``token_secret``, so a token made
for one purpose or person never verifies for another, and rotating the secret
(``rotate``) invalidates every link ever sent. The payload also carries the
brand id, checked against the subscriber's brand. Django's signer compares in
constant time. Links are built on ``SITE_URL``, never on the request's Host.

This module also builds the unsubscribe headers (RFC 2369, RFC 8058, RFC 2919)
that every message to a subscriber carries.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from email.header import Header
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core import signing
from django.urls import get_script_prefix, reverse
from django.utils.text import slugify

from audiences.models import Audience, Subscriber, new_token_secret


class Purpose(StrEnum):
    CONFIRM = "confirm"
    MANAGE = "manage"
    UNSUBSCRIBE = "unsubscribe"


class InvalidLink(Exception):
    """The token is malformed, tampered with, for another purpose, or unknown."""


class ExpiredLink(InvalidLink):
    """The token was genuine but is older than its purpose allows."""


# Manage and unsubscribe links must keep working long after the message that
# carried them (CASL asks for at least 60 days).
_MAX_AGE: dict[Purpose, Callable[[], timedelta]] = {
    Purpose.CONFIRM: lambda: timedelta(days=settings.CONFIRM_LINK_DAYS),
    Purpose.MANAGE: lambda: timedelta(days=settings.MANAGE_LINK_DAYS),
    Purpose.UNSUBSCRIBE: lambda: timedelta(days=settings.MANAGE_LINK_DAYS),
}
_URL_NAME = {
    Purpose.CONFIRM: "audiences:confirm",
    Purpose.MANAGE: "audiences:preferences",
    Purpose.UNSUBSCRIBE: "audiences:unsubscribe",
}


@dataclass(frozen=True)
class Link:
    subscriber: Subscriber
    payload: dict[str, Any]

    @property
    def audience_ids(self) -> list[int]:
        return [int(a) for a in self.payload.get("a", []) if isinstance(a, int)]


def _signer(purpose: Purpose, subscriber: Subscriber) -> signing.TimestampSigner:
    salt = f"assent.links.{purpose}.{subscriber.pk}.{subscriber.token_secret}"
    return signing.TimestampSigner(salt=salt)


def make_token(purpose: Purpose, subscriber: Subscriber, **payload: Any) -> str:
    data = {"b": subscriber.brand_id, **payload}
    return f"{subscriber.pk}.{_signer(purpose, subscriber).sign_object(data, compress=True)}"


@functools.lru_cache(maxsize=16)
def _url_around_token(purpose: Purpose, script_prefix: str) -> tuple[str, str]:
    """The purpose's path before and after the token: ``reverse`` once, not per message (bench/send.py)."""
    marker = "0.TOKEN"
    path = reverse(_URL_NAME[purpose], kwargs={"token": marker})
    before, found, after = path.partition(marker)
    assert found, f"{_URL_NAME[purpose]} must put the token in its path"
    return before, after


def make_url(purpose: Purpose, subscriber: Subscriber, **payload: Any) -> str:
    # Tokens are URL-safe (digits, base64url, ':' and '.'), so reverse() would not quote them either.
    token = make_token(purpose, subscriber, **payload)
    before, after = _url_around_token(purpose, get_script_prefix())
    return f"{settings.SITE_URL}{before}{token}{after}"


def manage_url(subscriber: Subscriber) -> str:
    return make_url(Purpose.MANAGE, subscriber)


def unsubscribe_url(subscriber: Subscriber, audiences: Sequence[Audience]) -> str:
    return make_url(Purpose.UNSUBSCRIBE, subscriber, a=sorted(a.pk for a in audiences))


def read_token(purpose: Purpose, token: str) -> Link:
    """Verify a token for ``purpose`` and return its subscriber and payload.

    Raises ``ExpiredLink`` for a genuine but old token, ``InvalidLink`` otherwise.
    """
    subscriber_id, _, signed = token.partition(".")
    if not subscriber_id.isdigit() or not signed or len(token) > 1000:
        raise InvalidLink("malformed token")
    subscriber = Subscriber.objects.select_related("brand").filter(pk=int(subscriber_id)).first()
    if subscriber is None:
        raise InvalidLink("unknown subscriber")
    try:
        payload = _signer(purpose, subscriber).unsign_object(signed, max_age=_MAX_AGE[purpose]())
    except signing.SignatureExpired as exc:
        raise ExpiredLink(str(exc)) from exc
    except signing.BadSignature as exc:
        raise InvalidLink(str(exc)) from exc
    if not isinstance(payload, dict) or payload.get("b") != subscriber.brand_id:
        raise InvalidLink("token is for another brand")
    return Link(subscriber=subscriber, payload=payload)


def rotate(*, subscriber: Subscriber) -> Subscriber:
    """Give the subscriber a new secret: every link sent before stops working."""
    subscriber.token_secret = new_token_secret()
    subscriber.save(update_fields=["token_secret"])
    return subscriber


def list_id(audience: Audience) -> str:
    """RFC 2919 List-Id: a stable, unique identifier per audience under the site's host."""
    host = urlsplit(settings.SITE_URL).hostname or "localhost"
    label = slugify(audience.name)[:40] or "list"
    name = " ".join(audience.name.replace("<", "").replace(">", "").split())
    if not name.isascii():  # encoded words in the phrase only: the <list-id> itself stays plain (RFC 2919)
        name = " ".join(Header(name, "utf-8", maxlinelen=75).encode().split())
    elif any(ch in name for ch in '()<>[]:;@\\,."'):
        name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{name} <{label}.{audience.pk}.{audience.brand_id}.{host}>"


def unsubscribe_headers(subscriber: Subscriber, audiences: Sequence[Audience]) -> dict[str, str]:
    """The one definition of the unsubscribe headers of a message about ``audiences``.

    Exactly one ``List-Unsubscribe`` with one https URL, exactly one
    ``List-Unsubscribe-Post`` (RFC 8058 one-click), and a ``List-Id``. RFC 2919
    allows one List-Id per message, so a message about several audiences names
    the first of them. (No mailto: target until inbound mail is processed.)
    """
    headers = {
        "List-Unsubscribe": f"<{unsubscribe_url(subscriber, audiences)}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    if audiences:
        headers["List-Id"] = list_id(sorted(audiences, key=lambda a: a.pk)[0])
    return headers
