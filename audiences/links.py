"""Every link a consumer receives: purpose-bound, subscriber-bound signed tokens.

A token is ``<subscriber id>.<signed payload>``. The signature's salt names the
purpose, the subscriber and the subscriber's ``token_secret``, so a token made
for one purpose or person never verifies for another, and rotating the secret
invalidates every link ever sent. The payload also carries the brand id, checked
against the subscriber's brand. Django's signer compares in constant time.
Links are always built on ``SITE_URL``, never on the request's Host header.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.core import signing
from django.urls import reverse

from audiences.models import Subscriber


class Purpose(StrEnum):
    CONFIRM = "confirm"


class InvalidLink(Exception):
    """The token is malformed, tampered with, for another purpose, or unknown."""


class ExpiredLink(InvalidLink):
    """The token was genuine but is older than its purpose allows."""


_MAX_AGE = {Purpose.CONFIRM: lambda: timedelta(days=settings.CONFIRM_LINK_DAYS)}
_URL_NAME = {Purpose.CONFIRM: "audiences:confirm"}


@dataclass(frozen=True)
class Link:
    subscriber: Subscriber
    payload: dict[str, Any]


def _signer(purpose: Purpose, subscriber: Subscriber) -> signing.TimestampSigner:
    salt = f"assent.links.{purpose}.{subscriber.pk}.{subscriber.token_secret}"
    return signing.TimestampSigner(salt=salt)


def make_token(purpose: Purpose, subscriber: Subscriber, **payload: Any) -> str:
    data = {"b": subscriber.brand_id, **payload}
    return f"{subscriber.pk}.{_signer(purpose, subscriber).sign_object(data, compress=True)}"


def make_url(purpose: Purpose, subscriber: Subscriber, **payload: Any) -> str:
    token = make_token(purpose, subscriber, **payload)
    return settings.SITE_URL + reverse(_URL_NAME[purpose], kwargs={"token": token})


def read_token(purpose: Purpose, token: str) -> Link:
    """Verify a token for ``purpose`` and return its subscriber and payload.

    Raises ``ExpiredLink`` for a genuine but old token, ``InvalidLink`` otherwise.
    """
    subscriber_id, _, signed = token.partition(".")
    if not subscriber_id.isdigit() or not signed:
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
