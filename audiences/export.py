"""A person's data, as they may download it (GDPR Art. 15 and 20)."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from audiences.models import Subscriber


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def export_data(*, subscriber: Subscriber) -> dict[str, Any]:
    """Everything held about the person: profile, attributes, subscriptions, the
    full consent history with its evidence, and the messages sent to them."""
    brand = subscriber.brand
    return {
        "exported_at": timezone.now().isoformat(),
        "controller": {
            "name": brand.name,
            "email": brand.reply_to or brand.from_email,
            "postal_address": brand.postal_address,
            "privacy_policy": brand.privacy_url,
        },
        "profile": {
            "email": subscriber.email,
            "name": subscriber.name,
            "language": subscriber.language,
            "status": subscriber.status,
            "frequency": subscriber.frequency,
            "source": subscriber.source,
            "created_at": _iso(subscriber.created_at),
            "confirmed_at": _iso(subscriber.confirmed_at),
            "unsubscribed_at": _iso(subscriber.unsubscribed_at),
            "blocked_at": _iso(subscriber.blocked_at),
            "paused_until": _iso(subscriber.paused_until),
            "last_engaged_at": _iso(subscriber.last_engaged_at),
        },
        "attributes": subscriber.attributes,
        "subscriptions": [
            {
                "audience": s.audience.name,
                "status": s.status,
                "source": s.source,
                "requested_at": _iso(s.requested_at),
                "confirmed_at": _iso(s.confirmed_at),
                "ended_at": _iso(s.ended_at),
            }
            for s in subscriber.subscriptions.select_related("audience").order_by("audience__name")
        ],
        "consent_history": [
            {
                "at": _iso(e.created_at),
                "kind": e.kind,
                "actor": e.actor,
                "source": e.source,
                "ip": e.ip,
                "user_agent": e.user_agent,
                "form": e.signup_form.title if e.signup_form else None,
                "wording": e.wording_text or None,
                "audiences": [a.get("name") for a in e.audiences],
                "details": e.details,
            }
            for e in subscriber.consent_events.select_related("signup_form").order_by("created_at", "pk")
        ],
        "messages_sent": [
            {"kind": m.kind, "status": m.status, "queued_at": _iso(m.created_at), "sent_at": _iso(m.sent_at)}
            for m in subscriber.consumer_emails.order_by("created_at", "pk")
        ],
    }
