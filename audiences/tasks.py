"""Celery tasks: thin wrappers that take ids and call one operation."""

from __future__ import annotations

import logging
import smtplib

from celery import shared_task
from celery.app.task import Task
from django.conf import settings

from audiences import confirmation, consent

log = logging.getLogger(__name__)

MAX_RETRIES = 5

# smtplib's errors are OSErrors: a 4xx reply, a dropped connection or a timeout
# is worth retrying with backoff; a 5xx reply is final.


@shared_task(bind=True, max_retries=MAX_RETRIES, acks_late=True)
def send_confirmation(self: Task, request_id: int) -> str:
    try:
        return confirmation.send_confirmation(request_id=request_id)
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500 and self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        confirmation.mark_failed(request_id=request_id, error=f"{exc.smtp_code} {exc.smtp_error!r}")
        return "failed"
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if all(400 <= code < 500 for code in codes) and self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        confirmation.mark_failed(request_id=request_id, error=f"recipient refused: {exc.recipients!r}")
        return "failed"
    except OSError as exc:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        confirmation.mark_failed(request_id=request_id, error=repr(exc))
        return "failed"


@shared_task
def purge_unconfirmed() -> tuple[int, int]:
    subscribers, subscriptions = consent.purge_unconfirmed()
    log.info("purged %s unconfirmed subscribers and %s stale pending subscriptions", subscribers, subscriptions)
    return subscribers, subscriptions


def _backoff(retries: int) -> int:
    return int(min(settings.EMAIL_RETRY_BACKOFF_SECONDS * 2**retries, 600))
