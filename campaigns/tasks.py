"""Celery tasks for campaigns: thin, idempotent, driven by the Delivery rows."""

from __future__ import annotations

import logging

from celery import shared_task
from celery.app.task import Task
from django.conf import settings

from campaigns import delivery

log = logging.getLogger(__name__)


@shared_task(acks_late=True)
def start_campaign(campaign_id: int) -> bool:
    return delivery.start(campaign_id=campaign_id)


@shared_task(bind=True, acks_late=True, max_retries=None)
def send_campaign_batch(self: Task, campaign_id: int) -> dict[str, int]:
    """One batch, then enqueue the next while work remains (a chain per parallel slot)."""
    result = delivery.send_batch(campaign_id=campaign_id)
    if result.wait:
        send_campaign_batch.apply_async((campaign_id,), countdown=min(result.wait, 60))
    elif result.claimed:
        send_campaign_batch.delay(campaign_id)
    elif not result.done:
        # Only deliveries waiting for a retry are left: look again shortly.
        send_campaign_batch.apply_async((campaign_id,), countdown=min(settings.EMAIL_RETRY_BACKOFF_SECONDS, 5))
    else:
        delivery.finish_if_done(campaign_id=campaign_id)
    return {"sent": result.sent, "skipped": result.skipped, "failed": result.failed, "retry": result.retry}


@shared_task
def reconcile_deliveries() -> dict[str, int]:
    stats = delivery.reconcile()
    if any(stats.values()):
        log.info("reconciled deliveries: %s", stats)
    return stats


@shared_task(acks_late=True)
def process_delivery_event(event_id: int) -> str:
    """Classify and act on one recorded provider event (idempotent: a processed event is left alone)."""
    from campaigns import bounces

    return bounces.process(event_id)


@shared_task(bind=True, acks_late=True, max_retries=5, default_retry_delay=60)
def notify_sending_alert(self: Task, alert_id: int) -> int:
    """Email the owners about a complaint-rate warning or stop (retried while the mail server is down)."""
    from campaigns import bounces

    try:
        return bounces.notify(alert_id)
    except OSError as exc:
        raise self.retry(exc=exc) from exc
