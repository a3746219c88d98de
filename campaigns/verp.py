"""VERP return paths: a bounce addressed to ``bounces+d123.ab12cd34ef@example.com`` names its delivery.

With plain SMTP, bounces come back as delivery status notifications (RFC 3464)
to the envelope sender. Giving each delivery its own envelope sender, derived
from ``BOUNCE_ADDRESS`` (``bounces@mail.example.com``), lets the bounce-mailbox
reader find the delivery even when the returned message is truncated. The token
carries an HMAC so a forged report cannot name someone else's delivery.
"""

from __future__ import annotations

import hmac
import re
from hashlib import sha256

from django.conf import settings

_TOKEN = re.compile(r"^d(?P<pk>\d{1,19})\.(?P<sig>[0-9a-f]{10})$")


def _signature(delivery_id: int) -> str:
    key = f"assent.verp:{settings.SECRET_KEY}".encode()
    return hmac.new(key, f"d{delivery_id}".encode(), sha256).hexdigest()[:10]


def token(delivery_id: int) -> str:
    """``d<id>.<signature>``: names one delivery in a way nobody else can forge (VERP, X-Assent-Delivery)."""
    return f"d{delivery_id}.{_signature(delivery_id)}"


def token_delivery_id(value: str) -> int | None:
    """The delivery a token names, when its signature is genuine; else None."""
    match = _TOKEN.match(value.strip())
    if match is None:
        return None
    pk = int(match["pk"])
    return pk if hmac.compare_digest(match["sig"], _signature(pk)) else None


def return_path(delivery_id: int) -> str | None:
    """The envelope sender for one delivery, or None when ``BOUNCE_ADDRESS`` is not set."""
    base = settings.BOUNCE_ADDRESS
    if not base:
        return None
    local, _, domain = base.rpartition("@")
    return f"{local}+{token(delivery_id)}@{domain}"


def delivery_id(address: str) -> int | None:
    """The delivery a VERP address names, when its signature is genuine; else None."""
    local = address.strip().strip("<>").rpartition("@")[0]
    _, plus, value = local.partition("+")
    return token_delivery_id(value) if plus else None
