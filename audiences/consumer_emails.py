"""Emails a consumer asked for: the double-opt-in confirmation and a fresh manage link.

Each is a ``ConsumerEmail`` row, the unit of work for the task and the record
behind the per-address limits.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.utils import timezone

from audiences import links
from audiences.consent import is_suppressed, may_send_confirmation
from audiences.emails import brand_sender, make_message
from audiences.models import ConsumerEmail, Subscriber, Subscription

log = logging.getLogger(__name__)


def send(*, email_id: int) -> ConsumerEmail.Status:
    """Send one consumer email; safe to run twice.

    1. Claim the row (queued → sending) with a conditional update; if another
       run got there first, do nothing.
    2. Re-check at send time: the person may have been blocked or suppressed, or
       confirmed those audiences meanwhile. Then skip, with the reason.
    3. Build and send the message; mark it sent. On an exception put it back to
       queued so the task's retry can claim it again, and re-raise.
    """
    claimed = ConsumerEmail.objects.filter(pk=email_id, status=ConsumerEmail.Status.QUEUED).update(
        status=ConsumerEmail.Status.SENDING
    )
    if claimed != 1:
        return ConsumerEmail.Status.SKIPPED
    row = ConsumerEmail.objects.select_related("subscriber__brand").get(pk=email_id)
    subscriber = row.subscriber
    if row.kind == ConsumerEmail.Kind.CONFIRM:
        barred = not may_send_confirmation(subscriber)
    else:
        barred = subscriber.status == Subscriber.Status.BLOCKED or is_suppressed(
            brand=subscriber.brand, email=subscriber.email
        )
    if barred:
        _finish(row, ConsumerEmail.Status.SKIPPED, "blocked")
        return ConsumerEmail.Status.SKIPPED
    message = _confirmation(row, subscriber) if row.kind == ConsumerEmail.Kind.CONFIRM else _manage_link(subscriber)
    if message is None:
        _finish(row, ConsumerEmail.Status.SKIPPED, "nothing pending")
        return ConsumerEmail.Status.SKIPPED
    try:
        message.send()
    except Exception:
        ConsumerEmail.objects.filter(pk=email_id).update(status=ConsumerEmail.Status.QUEUED)
        raise
    _finish(row, ConsumerEmail.Status.SENT)
    return ConsumerEmail.Status.SENT


def mark_failed(*, email_id: int, error: str) -> None:
    """The task's final failure after its retries."""
    ConsumerEmail.objects.filter(pk=email_id).exclude(status=ConsumerEmail.Status.SENT).update(
        status=ConsumerEmail.Status.FAILED, error=error[:2000]
    )
    log.error("consumer email %s failed: %s", email_id, error)


def _finish(row: ConsumerEmail, status: ConsumerEmail.Status, error: str = "") -> None:
    ConsumerEmail.objects.filter(pk=row.pk).update(status=status, sent_at=timezone.now(), error=error)


def _confirmation(row: ConsumerEmail, subscriber: Subscriber) -> EmailMultiAlternatives | None:
    pending = list(
        subscriber.subscriptions.select_related("audience")
        .filter(audience_id__in=row.audience_ids, status=Subscription.Status.PENDING)
        .order_by("audience__name")
    )
    if not pending:
        return None
    audiences = [s.audience for s in pending]
    return _message(
        "confirm",
        subscriber,
        {
            "audience_names": [a.name for a in audiences],
            "confirm_url": links.make_url(links.Purpose.CONFIRM, subscriber, a=row.audience_ids, r=row.pk),
            "expiry_days": settings.CONFIRM_LINK_DAYS,
            "manage_url": links.manage_url(subscriber),
            "unsubscribe_url": links.unsubscribe_url(subscriber, audiences),
            # The brand asks (an import without proof of opt-in), rather than the person having asked.
            "brand_asked": all(s.source == "import" for s in pending),
        },
        headers=links.unsubscribe_headers(subscriber, audiences),
    )


def _manage_link(subscriber: Subscriber) -> EmailMultiAlternatives:
    return _message("manage_link", subscriber, {"manage_url": links.manage_url(subscriber)})


def _message(
    name: str, subscriber: Subscriber, context: dict[str, object], headers: dict[str, str] | None = None
) -> EmailMultiAlternatives:
    brand = subscriber.brand
    return make_message(
        name,
        to=subscriber.email,
        to_name=subscriber.name,
        context={"brand": brand, "subscriber": subscriber, **context},
        from_email=brand_sender(brand),
        reply_to=brand.reply_to,
        language=subscriber.language,
        headers=headers,
    )
