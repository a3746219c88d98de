"""Sending the double-opt-in confirmation email for one ``ConfirmationRequest``."""

from __future__ import annotations

import logging

from django.conf import settings
from django.utils import timezone

from audiences import links
from audiences.consent import is_suppressed
from audiences.emails import brand_sender, make_message
from audiences.models import ConfirmationRequest, Subscriber, Subscription

log = logging.getLogger(__name__)


def send_confirmation(*, request_id: int) -> ConfirmationRequest.Status:
    """Send one confirmation email; safe to run twice.

    1. Claim the request (queued → sending) with a conditional update; if another
       run got there first, do nothing.
    2. Re-check at send time: the person may have been blocked or suppressed, or
       confirmed those audiences meanwhile. Then skip.
    3. Build and send the message; mark it sent. On an exception put it back to
       queued so the task's retry can claim it again, and re-raise.
    """
    claimed = ConfirmationRequest.objects.filter(pk=request_id, status=ConfirmationRequest.Status.QUEUED).update(
        status=ConfirmationRequest.Status.SENDING
    )
    if claimed != 1:
        return ConfirmationRequest.Status.SKIPPED
    request = ConfirmationRequest.objects.select_related("subscriber__brand").get(pk=request_id)
    subscriber = request.subscriber
    pending = list(
        subscriber.subscriptions.select_related("audience")
        .filter(audience_id__in=request.audience_ids, status=Subscription.Status.PENDING)
        .order_by("audience__name")
    )
    blocked = subscriber.status == Subscriber.Status.BLOCKED or is_suppressed(
        brand=subscriber.brand, email=subscriber.email
    )
    if blocked or not pending:
        _finish(request, ConfirmationRequest.Status.SKIPPED, "blocked" if blocked else "nothing pending")
        return ConfirmationRequest.Status.SKIPPED
    try:
        _build(request, subscriber, [s.audience.name for s in pending]).send()
    except Exception:
        ConfirmationRequest.objects.filter(pk=request_id).update(status=ConfirmationRequest.Status.QUEUED)
        raise
    _finish(request, ConfirmationRequest.Status.SENT)
    return ConfirmationRequest.Status.SENT


def mark_failed(*, request_id: int, error: str) -> None:
    """The task's final failure after its retries."""
    ConfirmationRequest.objects.filter(pk=request_id).exclude(status=ConfirmationRequest.Status.SENT).update(
        status=ConfirmationRequest.Status.FAILED, error=error[:2000]
    )
    log.error("confirmation request %s failed: %s", request_id, error)


def _finish(request: ConfirmationRequest, status: ConfirmationRequest.Status, error: str = "") -> None:
    ConfirmationRequest.objects.filter(pk=request.pk).update(status=status, sent_at=timezone.now(), error=error)


def _build(request: ConfirmationRequest, subscriber: Subscriber, audience_names: list[str]):  # type: ignore[no-untyped-def]
    brand = subscriber.brand
    url = links.make_url(links.Purpose.CONFIRM, subscriber, a=request.audience_ids, r=request.pk)
    context = {
        "brand": brand,
        "subscriber": subscriber,
        "audience_names": audience_names,
        "confirm_url": url,
        "expiry_days": settings.CONFIRM_LINK_DAYS,
    }
    return make_message(
        "confirm",
        to=subscriber.email,
        to_name=subscriber.name,
        context=context,
        from_email=brand_sender(brand),
        reply_to=brand.reply_to,
        language=subscriber.language,
    )
