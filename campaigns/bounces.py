"""Bounces, complaints and deliveries reported after a message left: record, then process.

Two steps, so a provider's webhook answers fast and a replay changes nothing:

1. ``record(report)`` stores the report once as a ``DeliveryEvent`` (the
   unique (provider, event_id) constraint makes a replay a no-op) and queues
   its processing after commit. Webhook signal handlers, the anymail inbound
   webhook and the bounce-mailbox reader all end here.
2. ``process(event_id)`` (a Celery task) classifies the event, links it to the
   delivery (anymail metadata, provider id, Message-ID or VERP address) and the
   subscriber, and acts: a hard bounce or a complaint blocks and suppresses the
   address at once, with a consent event whose actor is the provider; soft
   bounces suppress after ``SOFT_BOUNCE_LIMIT`` in a row spanning
   ``SOFT_BOUNCE_DAYS`` (a delivery resets the count); policy refusals (x.7.x)
   never suppress the recipient, they are the brand's sending problem. Each
   outcome is counted on the brand's ``SendingDay``; the daily complaint rate
   warns owners above ``COMPLAINT_WARN_RATE`` and stops the brand's sending at
   ``COMPLAINT_STOP_RATE`` until an owner acknowledges.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from campaigns.models import DeliveryEvent

log = logging.getLogger(__name__)

_STATUS = re.compile(r"\b([245])\.(\d{1,3})\.(\d{1,3})\b")


@dataclass
class Report:
    """One event about one recipient of one message, as a provider or a bounce report gave it.

    ``event_type`` uses anymail's normalised names: ``delivered``, ``bounced``,
    ``deferred``, ``rejected``, ``complained``, ``opened``, ``clicked``,
    ``unsubscribed``, … ``event_id`` must be stable across replays of the same
    event; when the provider gives none, ``stable_id`` derives one.
    """

    provider: str
    event_type: str
    event_id: str = ""
    recipient: str = ""
    message_id: str = ""
    provider_message_id: str = ""
    delivery_id: int | None = None
    reject_reason: str = ""
    smtp_status: str = ""
    description: str = ""
    occurred_at: datetime | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def stable_id(self) -> str:
        """The event's id, or a digest of what identifies it (the same report twice gives the same id)."""
        if self.event_id:
            return self.event_id[:255]
        parts = [
            self.event_type,
            self.recipient.lower(),
            self.message_id,
            self.provider_message_id,
            str(self.delivery_id or ""),
            self.smtp_status,
            self.occurred_at.isoformat() if self.occurred_at else "",
        ]
        return "sha256:" + hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def enhanced_status(*texts: str) -> str:
    """The first RFC 3463 enhanced status code (``5.1.1``) in these texts, or ''."""
    for text in texts:
        match = _STATUS.search(text or "")
        if match:
            return ".".join(match.groups())
    return ""


def record(report: Report) -> DeliveryEvent | None:
    """Store the report once and queue its processing; None when this event was already recorded."""
    from campaigns.tasks import process_delivery_event

    event_id = report.stable_id()
    status = report.smtp_status or enhanced_status(report.description, str(report.details.get("mta_response", "")))
    try:
        with transaction.atomic():
            event = DeliveryEvent.objects.create(
                provider=report.provider[:40],
                event_id=event_id,
                event_type=report.event_type[:20],
                reject_reason=(report.reject_reason or "")[:20],
                smtp_status=status[:16],
                description=(report.description or "")[:1000],
                message_id=_bracketed(report.message_id)[:255],
                provider_message_id=(report.provider_message_id or "")[:255],
                occurred_at=report.occurred_at or timezone.now(),
                details={
                    **report.details,
                    **({"delivery_id": report.delivery_id} if report.delivery_id else {}),
                    **({"recipient_hash": _hash(report.recipient)} if report.recipient else {}),
                },
            )
            transaction.on_commit(lambda: process_delivery_event.delay(event.pk))
    except IntegrityError:
        log.info("replayed %s event %s ignored", report.provider, event_id)
        return None
    return event


def _bracketed(message_id: str) -> str:
    message_id = (message_id or "").strip()
    if message_id and not message_id.startswith("<"):
        return f"<{message_id}>"
    return message_id


def _hash(address: str) -> str:
    from audiences.consent import email_hash, normalise_email

    try:
        return email_hash(normalise_email(address))
    except ValidationError:  # an unparseable address identifies nobody
        return ""
