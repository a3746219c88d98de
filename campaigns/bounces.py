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
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import Max, Min, Q
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.formats import number_format

from audiences import audit, charts, consent
from audiences.emails import make_message
from audiences.models import Brand, ConsentEvent, Membership, Subscriber, Suppression
from campaigns.models import Campaign, Delivery, DeliveryEvent, SendingAlert, SendingDay

log = logging.getLogger(__name__)

# An RFC 3463 status code, not a piece of an IP address or a version number (10.5.1.20, 2.5.1.1).
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d]|\.\d)")


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
    try:
        return consent.email_hash(consent.normalise_email(address))
    except ValidationError:  # an unparseable address identifies nobody
        return ""


# --- Processing -------------------------------------------------------------------------------

Kind = DeliveryEvent.Kind

# RFC 3463 / 7505: the mailbox or domain does not exist, or can never receive mail.
HARD_STATUSES = frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10"})
HARD_REASONS = frozenset({"invalid", "bounced"})
# anymail reject reasons that say the sender, not the recipient, has a problem.
POLICY_REASONS = frozenset({"blocked", "spam"})


def classify(event: DeliveryEvent) -> str:
    """What the event means for the recipient: one of ``DeliveryEvent.Kind``.

    Hard bounce: ``bounced``/``rejected`` with reason invalid or bounced, or an
    enhanced status 5.1.1/5.1.2/5.1.3/5.1.6 (and 5.1.10, null MX). Policy: any
    x.7.x status or a blocked/spam rejection; never the recipient's fault. Other
    bounces, deferrals and timeouts are soft.
    """
    kind = event.event_type
    if kind == "complained":
        return Kind.COMPLAINED
    if kind == "delivered":
        return Kind.DELIVERED
    if kind in {"opened", "clicked", "unsubscribed"}:
        return kind
    if kind not in {"bounced", "rejected", "deferred"}:
        return Kind.OTHER  # queued, sent, failed (the provider's own trouble), unknown, …
    status = event.smtp_status
    if status.split(".")[1:2] == ["7"] or event.reject_reason in POLICY_REASONS:
        return Kind.POLICY
    if _permanent(event) and (status in HARD_STATUSES or event.reject_reason in HARD_REASONS):
        return Kind.BOUNCED
    return Kind.SOFT_BOUNCE


def _permanent(event: DeliveryEvent) -> bool:
    """A final failure, not a deferral (the message may still arrive)."""
    return event.event_type != "deferred" and not event.smtp_status.startswith("4")


def process(event_id: int) -> str:
    """Classify one recorded event, link it, and act on it; a processed event is left alone."""
    alert_ids: list[int] = []
    with transaction.atomic():
        event = DeliveryEvent.objects.select_for_update().filter(pk=event_id, processed_at__isnull=True).first()
        if event is None:
            return "already processed"
        event.kind = classify(event)
        delivery = _find_delivery(event)
        if delivery is not None:
            event.delivery = delivery
            event.brand_id = delivery.campaign.brand_id
            event.subscriber_id = delivery.subscriber_id
        event.processed_at = timezone.now()
        event.save(update_fields=["kind", "delivery", "brand", "subscriber", "processed_at"])
        if delivery is None:
            log.info("%s event %s names no delivery of ours; recorded only", event.provider, event.pk)
            return f"{event.kind}: no delivery"
        alert_ids = _act(event, delivery)
    for alert_id in alert_ids:
        _notify(alert_id)
    return event.kind


def _find_delivery(event: DeliveryEvent) -> Delivery | None:
    """The delivery the event is about: metadata or VERP id, the provider's id, or our Message-ID."""
    deliveries = Delivery.objects.select_related("campaign__brand", "subscriber")
    found = None
    pk = event.details.get("delivery_id")
    if pk and str(pk).isdigit():
        found = deliveries.filter(pk=int(pk)).first()
    if found is None and event.provider_message_id:
        found = deliveries.filter(provider_id=event.provider_message_id).first()
    if found is None and event.message_id:
        found = deliveries.filter(message_id=event.message_id).first()
    recipient = event.details.get("recipient_hash")
    if found is not None and recipient and recipient != found.subscriber.email_hash:
        # A report about another address (a forwarding target, say) says nothing about this person.
        log.warning("event %s recipient differs from delivery %s's subscriber; not acted on", event.pk, found.pk)
        return None
    return found


def _act(event: DeliveryEvent, delivery: Delivery) -> list[int]:
    """Apply the event to the delivery, the subscriber and the brand's counters; return new alert ids."""
    subscriber = delivery.subscriber
    brand = delivery.campaign.brand
    evidence = consent.Evidence(
        actor=ConsentEvent.Actor.PROVIDER,
        source=ConsentEvent.Source.MAILBOX if event.provider == "mailbox" else ConsentEvent.Source.WEBHOOK,
    )
    day = timezone.localtime(delivery.sent_at or event.occurred_at, zone(brand)).date()
    details = {"event": event.pk, "provider": event.provider, "status": event.smtp_status}
    first = event.kind in _COUNTED and _first_report(event, delivery)
    if event.kind == Kind.BOUNCED:
        _mark(delivery, Delivery.Status.BOUNCED, event)
        consent.block(subscriber=subscriber, evidence=evidence, reason=Suppression.Reason.HARD_BOUNCE, details=details)
        if first:
            count(brand.pk, day, hard_bounces=1)
    elif event.kind == Kind.COMPLAINED:
        _mark(delivery, Delivery.Status.COMPLAINED, event)
        consent.block(subscriber=subscriber, evidence=evidence, reason=Suppression.Reason.COMPLAINT, details=details)
        if first:
            count(brand.pk, day, complaints=1)
            return _check_rates(brand, day)
    elif event.kind == Kind.SOFT_BOUNCE:
        if first:
            count(brand.pk, day, soft_bounces=1)
        if _soft_bounces_exhausted(subscriber):
            consent.block(
                subscriber=subscriber,
                evidence=evidence,
                reason=Suppression.Reason.SOFT_BOUNCE,
                details={**details, "soft_bounces": settings.SOFT_BOUNCE_LIMIT},
            )
    elif event.kind == Kind.POLICY:
        if _permanent(event):  # a deferral (Gmail's 421 4.7.28, say) may still be delivered on a later try
            _mark(delivery, Delivery.Status.FAILED, event)
        if first:
            count(brand.pk, day, policy_failures=1)
    elif event.kind == Kind.DELIVERED and first:
        count(brand.pk, day, delivered=1)
    elif event.kind in {Kind.OPENED, Kind.CLICKED}:
        Subscriber.objects.filter(pk=subscriber.pk).filter(
            Q(last_engaged_at__isnull=True) | Q(last_engaged_at__lt=event.occurred_at)
        ).update(last_engaged_at=event.occurred_at)
    elif event.kind == Kind.UNSUBSCRIBED:
        # The person unsubscribed through the provider's own link: every audience, at once.
        consent.unsubscribe(subscriber=subscriber, audience_ids=None, evidence=evidence)
    return []


# The kinds counted on the brand's SendingDay.
_COUNTED = frozenset({Kind.BOUNCED, Kind.COMPLAINED, Kind.SOFT_BOUNCE, Kind.POLICY, Kind.DELIVERED})


def _first_report(event: DeliveryEvent, delivery: Delivery) -> bool:
    """Whether this is the first report of its kind about the message; counters count messages, not reports.

    One complaint can come as the provider's webhook and as the feedback loop's
    report, a deferred message is reported at each retry. The delivery row is
    locked first, so two workers processing two reports of one message take turns.
    """
    list(Delivery.objects.select_for_update().filter(pk=delivery.pk).values_list("pk", flat=True))
    return not DeliveryEvent.objects.filter(delivery=delivery, kind=event.kind).exclude(pk=event.pk).exists()


def _mark(delivery: Delivery, status: str, event: DeliveryEvent) -> None:
    reason = " ".join(filter(None, [event.smtp_status, event.description]))[:255]
    Delivery.objects.filter(pk=delivery.pk).update(status=status, reason=reason)


def _soft_bounces_exhausted(subscriber: Subscriber) -> bool:
    """``SOFT_BOUNCE_LIMIT`` messages soft-bounced in a row (since the last delivery), spanning ``SOFT_BOUNCE_DAYS``.

    Counted per message, so a provider reporting every retry of one deferred
    message does not count it several times.
    """
    events = DeliveryEvent.objects.filter(subscriber=subscriber)
    last_delivered = events.filter(kind=Kind.DELIVERED).order_by("-occurred_at").values("occurred_at").first()
    soft = events.filter(kind=Kind.SOFT_BOUNCE)
    if last_delivered:
        soft = soft.filter(occurred_at__gt=last_delivered["occurred_at"])
    spans = soft.values("delivery_id").annotate(first=Min("occurred_at"), last=Max("occurred_at"))
    if len(spans) < settings.SOFT_BOUNCE_LIMIT:
        return False
    first = min(row["first"] for row in spans)
    last = max(row["last"] for row in spans)
    return last - first >= timedelta(days=settings.SOFT_BOUNCE_DAYS)


def count(brand_id: int, day: date, **increments: int) -> None:
    """Add to the brand's counters for ``day`` in one upsert (safe under concurrent workers)."""
    fields = ["sent", "delivered", "hard_bounces", "soft_bounces", "complaints", "policy_failures"]
    unknown = set(increments) - set(fields)
    if unknown:
        raise ValueError(f"unknown counters {sorted(unknown)}")
    values = [increments.get(name, 0) for name in fields]
    table = SendingDay._meta.db_table
    updates = ", ".join(f"{name} = {table}.{name} + excluded.{name}" for name in fields)
    placeholders = ", ".join(["%s"] * len(fields))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (brand_id, day, {', '.join(fields)}) VALUES (%s, %s, {placeholders}) "  # noqa: S608
            f"ON CONFLICT (brand_id, day) DO UPDATE SET {updates}",
            [brand_id, day, *values],
        )


def rates(row: SendingDay) -> tuple[float, float]:
    """(complaint rate, hard bounce rate) of one day; 0 when nothing was sent."""
    if not row.sent:
        return 0.0, 0.0
    return row.complaints / row.sent, row.hard_bounces / row.sent


def levels(row: SendingDay) -> list[SendingAlert.Level]:
    """The alert levels the day's complaint rate reached: above the warning rate, at or above the stop rate."""
    complaint_rate, _ = rates(row)
    reached = []
    if row.sent and complaint_rate > settings.COMPLAINT_WARN_RATE:
        reached.append(SendingAlert.Level.WARNING)
    if row.sent and complaint_rate >= settings.COMPLAINT_STOP_RATE:
        reached.append(SendingAlert.Level.STOP)
    return reached


def _check_rates(brand: Brand, day: date) -> list[int]:
    """Raise the day's warning or stop when its complaint rate crosses a threshold; return new alert ids."""
    row = SendingDay.objects.get(brand=brand, day=day)
    complaint_rate, bounce_rate = rates(row)
    created: list[int] = []
    for level in levels(row):
        alert, new = SendingAlert.objects.get_or_create(
            brand=brand,
            day=day,
            level=level,
            defaults={
                "complaint_rate": complaint_rate,
                "bounce_rate": bounce_rate,
                "sent": row.sent,
                "complaints": row.complaints,
            },
        )
        if not new:
            continue
        created.append(alert.pk)
        if level == SendingAlert.Level.STOP:
            _stop_sending(brand, alert)
    return created


def _stop_sending(brand: Brand, alert: SendingAlert) -> None:
    """Pause every running campaign of the brand; nothing starts until an owner acknowledges."""
    running = list(Campaign.objects.filter(brand=brand, status=Campaign.Status.SENDING))
    Campaign.objects.filter(pk__in=[c.pk for c in running]).update(status=Campaign.Status.PAUSED)
    audit.record(
        brand=brand,
        user=None,
        action="sending.stopped",
        target=str(alert.day),
        details={"complaint_rate": alert.complaint_rate, "paused": [c.name for c in running]},
    )
    log.warning(
        "brand %s: complaint rate %.3f%% on %s; sending stopped", brand.slug, alert.complaint_rate * 100, alert.day
    )


def stopped(brand: Brand | int) -> SendingAlert | None:
    """The brand's unacknowledged stop, if any: while it stands, no campaign may start or resume."""
    brand_id = brand if isinstance(brand, int) else brand.pk
    return SendingAlert.objects.filter(
        brand_id=brand_id, level=SendingAlert.Level.STOP, acknowledged_at__isnull=True
    ).first()


def acknowledge(*, alert: SendingAlert, user: User) -> SendingAlert:
    """An owner has seen the alert (and lifts a stop): every open alert of the brand up to this one is closed.

    Paused campaigns stay paused; the owner resumes them once the cause is fixed.
    """
    with transaction.atomic():
        now = timezone.now()
        closed = SendingAlert.objects.filter(
            brand_id=alert.brand_id, acknowledged_at__isnull=True, created_at__lte=alert.created_at
        ).update(acknowledged_at=now, acknowledged_by=user)
        if closed:
            audit.record(
                brand=alert.brand,
                user=user,
                action="sending.acknowledged",
                target=str(alert.day),
                details={"level": alert.level, "complaint_rate": alert.complaint_rate},
            )
    alert.refresh_from_db()
    return alert


def _notify(alert_id: int) -> None:
    from campaigns.tasks import notify_sending_alert

    transaction.on_commit(lambda: notify_sending_alert.delay(alert_id))


def notify(alert_id: int) -> int:
    """Email the brand's owners about an alert (their verified addresses); returns how many were sent."""
    alert = SendingAlert.objects.select_related("brand").get(pk=alert_id)
    brand = alert.brand
    owners = EmailAddress.objects.filter(
        verified=True,
        user__memberships__brand=brand,
        user__memberships__role=Membership.Role.OWNER,
    ).values_list("email", flat=True)
    url = settings.SITE_URL + reverse("dash:deliverability", kwargs={"brand_slug": brand.slug})
    with translation.override(brand.default_language):  # numbers as the email's language writes them
        context = {
            "brand": brand,
            "alert": alert,
            "stop": alert.level == SendingAlert.Level.STOP,
            "complaint_rate": charts.percent(alert.complaint_rate),
            "warn_rate": charts.percent(settings.COMPLAINT_WARN_RATE),
            "stop_rate": charts.percent(settings.COMPLAINT_STOP_RATE),
            "sent": number_format(alert.sent, force_grouping=True),
            "complaints": number_format(alert.complaints, force_grouping=True),
            "url": url,
            "SITE_NAME": settings.SITE_NAME,
            "LANGUAGE_CODE": brand.default_language,
        }
    sent = 0
    for address in sorted(set(owners)):
        message = make_message(
            "sending_alert",
            to=address,
            context=context,
            from_email=settings.DEFAULT_FROM_EMAIL,
            language=brand.default_language,
        )
        sent += message.send()
    return sent


def zone(brand: Brand) -> ZoneInfo:
    """The brand's time zone (its days are counted in it)."""
    try:
        return ZoneInfo(brand.time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")
