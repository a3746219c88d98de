"""The confirmation email task: claim first, send once, retry transient failures."""

from __future__ import annotations

import smtplib
from typing import Any

import pytest
from django.core import mail
from django.core.mail import EmailMultiAlternatives

from audiences import consent, consumer_emails, tasks
from audiences.consent import Evidence
from audiences.models import Audience, ConsentEvent, ConsumerEmail, SignupForm, Subscriber
from tests.mailserver import MailServer

EVIDENCE = Evidence(actor=ConsentEvent.Actor.CONSUMER, source=ConsentEvent.Source.FORM)


@pytest.fixture
def queued(signup_form: SignupForm, news: Audience) -> ConsumerEmail:
    """A confirmation request whose task has not run yet (on_commit callbacks are not executed)."""
    consent.request_subscription(form=signup_form, email="dana@example.com", audiences=[news], evidence=EVIDENCE)
    return ConsumerEmail.objects.get()


@pytest.fixture
def smtp(mail_server: MailServer, settings: Any) -> MailServer:
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = mail_server.port
    mail_server.clear()
    return mail_server


def test_running_the_task_twice_sends_one_email(queued: ConsumerEmail) -> None:
    tasks.send_consumer_email.delay(queued.pk)
    tasks.send_consumer_email.delay(queued.pk)
    assert len(mail.outbox) == 1
    queued.refresh_from_db()
    assert queued.status == ConsumerEmail.Status.SENT
    assert queued.sent_at is not None


def test_the_email_carries_a_working_confirm_link_and_a_brand_message_id(queued: ConsumerEmail) -> None:
    tasks.send_consumer_email.delay(queued.pk)
    [message] = mail.outbox
    assert isinstance(message, EmailMultiAlternatives)
    html = str(message.alternatives[0][0])
    assert "http://127.0.0.1:8000/c/" in message.body
    assert 'href="http://127.0.0.1:8000/c/' in html
    assert "style=" in html  # CSS inlined for email clients
    assert message.extra_headers["Message-ID"].endswith("@acme.example>")
    assert message.reply_to == ["help@acme.example"]


def test_a_person_blocked_before_sending_gets_nothing(queued: ConsumerEmail) -> None:
    Subscriber.objects.update(status=Subscriber.Status.BLOCKED)
    tasks.send_consumer_email.delay(queued.pk)
    assert mail.outbox == []
    queued.refresh_from_db()
    assert (queued.status, queued.error) == (ConsumerEmail.Status.SKIPPED, "blocked")


def test_a_transient_smtp_failure_puts_the_request_back_and_a_retry_sends_it(
    queued: ConsumerEmail, smtp: MailServer
) -> None:
    smtp.replies.append("451 4.3.0 Try again later")
    with pytest.raises(smtplib.SMTPDataError):
        consumer_emails.send(email_id=queued.pk)
    queued.refresh_from_db()
    assert queued.status == ConsumerEmail.Status.QUEUED
    assert consumer_emails.send(email_id=queued.pk) == ConsumerEmail.Status.SENT
    assert len(smtp.messages) == 1


def test_a_permanent_smtp_failure_is_recorded(queued: ConsumerEmail, smtp: MailServer) -> None:
    smtp.replies.append("550 5.1.1 No such user")
    assert tasks.send_consumer_email.apply(args=(queued.pk,)).get() == "failed"
    queued.refresh_from_db()
    assert queued.status == ConsumerEmail.Status.FAILED
    assert "550" in queued.error
    assert smtp.messages == []
