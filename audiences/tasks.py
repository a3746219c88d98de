"""Celery tasks: thin wrappers that take ids and call one operation."""

from __future__ import annotations

import logging
import smtplib

from celery import shared_task
from celery.app.task import Task
from django.conf import settings

from audiences import consent, consumer_emails
from audiences.emails import from_payload

log = logging.getLogger(__name__)

MAX_RETRIES = 5


@shared_task(bind=True, max_retries=MAX_RETRIES, acks_late=True)
def send_consumer_email(self: Task, email_id: int) -> str:
    """Send a confirmation or manage-link email.

    smtplib's errors are OSErrors: a 4xx reply, a dropped connection or a
    timeout is retried with backoff; a 5xx reply is final.
    """
    try:
        return consumer_emails.send(email_id=email_id)
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500 and self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        consumer_emails.mark_failed(email_id=email_id, error=f"{exc.smtp_code} {exc.smtp_error!r}")
        return "failed"
    except smtplib.SMTPRecipientsRefused as exc:
        codes = [code for code, _ in exc.recipients.values()]
        if all(400 <= code < 500 for code in codes) and self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        consumer_emails.mark_failed(email_id=email_id, error=f"recipient refused: {exc.recipients!r}")
        return "failed"
    except OSError as exc:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        consumer_emails.mark_failed(email_id=email_id, error=repr(exc))
        return "failed"


@shared_task(bind=True, max_retries=MAX_RETRIES, acks_late=True)
def send_prepared_email(self: Task, payload: dict[str, object]) -> None:
    """Send an account or team email (verification, password reset, invitation).

    These are not consent messages: they go to team members at their request.
    """
    try:
        from_payload(payload).send()
    except smtplib.SMTPResponseException as exc:
        if 400 <= exc.smtp_code < 500 and self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        log.error("account email to %s failed: %s", payload.get("to"), exc)
    except OSError as exc:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        log.error("account email to %s failed: %s", payload.get("to"), exc)


@shared_task
def purge_unconfirmed() -> tuple[int, int]:
    subscribers, subscriptions = consent.purge_unconfirmed()
    log.info("purged %s unconfirmed subscribers and %s stale pending subscriptions", subscribers, subscriptions)
    return subscribers, subscriptions


def _backoff(retries: int) -> int:
    return int(min(settings.EMAIL_RETRY_BACKOFF_SECONDS * 2**retries, 600))


@shared_task(bind=True, max_retries=MAX_RETRIES, acks_late=True)
def run_import(self: Task, job_id: int) -> str:
    """Run (or resume) a CSV import; safe to run twice, as the job is claimed first.

    A lost database connection is retried with backoff (the job resumes after
    its last committed chunk); any other error, or the last retry, fails the job.
    """
    # Imported here so this appended task leaves the module's import block alone.
    from django.db import InterfaceError, OperationalError

    from audiences import imports

    try:
        return imports.run(job_id=job_id)
    except (OperationalError, InterfaceError) as exc:
        if self.request.retries < MAX_RETRIES:
            raise self.retry(exc=exc, countdown=_backoff(self.request.retries)) from exc
        imports.mark_failed(job_id=job_id, error=repr(exc))
        return "failed"
    except Exception as exc:
        imports.mark_failed(job_id=job_id, error=repr(exc))
        raise
