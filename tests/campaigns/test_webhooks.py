"""Email provider webhooks: authenticated, recorded once, replays ignored.

Realistic payloads for each provider are posted through Django's test client
(with CSRF checks on, as a provider's POST carries no token) to the URLs a
provider is given, and the database says what happened. Processing of the
recorded events is queued after commit and tested with ``campaigns/bounces.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.test import Client

from audiences.models import email_hash
from campaigns.models import DeliveryEvent
from tests.conftest import db_snapshot

OLD_SECRET = "assent:old-webhook-secret"
NEW_SECRET = "assent:new-webhook-secret"
MAILGUN_KEY = "mailgun-http-webhook-signing-key"
RECIPIENT = "Dana.Bounce@Example.com"
OUR_MESSAGE_ID = "<20240502165005.42.a1b2c3@acme.example>"
BOUNCE_TEXT = "550 5.1.1 The email account that you tried to reach does not exist."

pytestmark = [
    pytest.mark.django_db,
    # anymail warns that SendGrid is no longer officially supported; the webhook still works.
    pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning"),
]


@dataclass
class Post:
    """One webhook request as the provider sends it."""

    path: str
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _auth(secret: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(secret.encode()).decode()}


def _send(client: Client, post: Post, secret: str | None = NEW_SECRET) -> Any:
    extra: dict[str, Any] = {**(_auth(secret) if secret else {}), **post.headers}
    return client.post(post.path, data=post.body, content_type=post.content_type, **extra)


@pytest.fixture
def client() -> Client:
    return Client(enforce_csrf_checks=True)


@pytest.fixture(autouse=True)
def webhook_settings(settings: Any) -> dict[str, Any]:
    settings.ANYMAIL = {
        "WEBHOOK_SECRET": [OLD_SECRET, NEW_SECRET],
        "MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
        "AMAZON_SES_CLIENT_PARAMS": {"region_name": "eu-west-1"},
        # An SNS subscription is confirmed by hand in these tests (no AWS here).
        "AMAZON_SES_AUTO_CONFIRM_SNS_SUBSCRIPTIONS": False,
    }
    return settings.ANYMAIL


# --- Payloads, as each provider posts a hard bounce -----------------------------------------------


def postmark_bounce() -> Post:
    event = {
        "RecordType": "Bounce",
        "MessageStream": "broadcast",
        "ID": 4323372036854775807,
        "Type": "HardBounce",
        "TypeCode": 1,
        "Name": "Hard bounce",
        "Tag": "campaign",
        "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
        "Metadata": {"assent_delivery": "42"},
        "ServerID": 23,
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": f"smtp;{BOUNCE_TEXT}",
        "Email": RECIPIENT,
        "From": "news@acme.example",
        "BouncedAt": "2024-05-02T16:50:05Z",
        "DumpAvailable": True,
        "Inactive": True,
        "CanActivate": True,
        "Subject": "Spring teas are here",
    }
    return Post("/webhooks/anymail/postmark/tracking/", json.dumps(event).encode())


def sendgrid_bounce() -> Post:
    events = [
        {
            "email": RECIPIENT,
            "timestamp": 1714668605,
            "smtp-id": OUR_MESSAGE_ID,
            "event": "bounce",
            "category": ["campaign"],
            "sg_event_id": "ZGVsaXZlcmVkLTAtMjQ1MzcyNTYtbVBWMVpKWjRReS1XSHpPLVlHcVlTUS0w",
            "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
            "anymail_id": "3c2f4a1e-5b6d-4e8f-9a0b-1c2d3e4f5a6b",
            "reason": BOUNCE_TEXT,
            "status": "5.1.1",
            "type": "bounce",
            "tls": 1,
            "assent_delivery": "42",
        }
    ]
    return Post("/webhooks/anymail/sendgrid/tracking/", json.dumps(events).encode())


MAILGUN_TOKEN = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0"


def mailgun_bounce(*, key: str = MAILGUN_KEY) -> Post:
    timestamp, token = "1714668605", MAILGUN_TOKEN
    signature = hmac.new(key.encode(), f"{timestamp}{token}".encode(), hashlib.sha256).hexdigest()
    event = {
        "signature": {"timestamp": timestamp, "token": token, "signature": signature},
        "event-data": {
            "id": "CPgfbmQMTCKtHW6uIWtuVe",
            "timestamp": 1714668605.123,
            "log-level": "error",
            "event": "failed",
            "severity": "permanent",
            "reason": "bounce",
            "recipient": RECIPIENT,
            "recipient-domain": "example.com",
            "message": {
                "headers": {
                    "to": RECIPIENT,
                    "message-id": OUR_MESSAGE_ID.strip("<>"),
                    "from": "Acme Tea <news@acme.example>",
                    "subject": "Spring teas are here",
                },
                "attachments": [],
                "size": 4213,
            },
            "delivery-status": {
                "code": 550,
                "attempt-no": 1,
                "message": BOUNCE_TEXT,
                "description": "",
                "mx-host": "mx.example.com",
                "session-seconds": 0.41,
                "tls": True,
            },
            "flags": {"is-routed": False, "is-authenticated": True, "is-system-test": False, "is-test-mode": False},
            "tags": ["campaign"],
            "user-variables": {"assent_delivery": "42"},
        },
    }
    return Post("/webhooks/anymail/mailgun/tracking/", json.dumps(event).encode())


def _sns(ses_event: dict[str, Any], sns_id: str = "7b0ad2a5-5d9b-5b0a-8d51-2f3c6ce6f8a1") -> Post:
    notification = {
        "Type": "Notification",
        "MessageId": sns_id,
        "TopicArn": "arn:aws:sns:eu-west-1:123456789012:assent-ses-events",
        "Subject": "Amazon SES Email Event Notification",
        "Message": json.dumps(ses_event),
        "Timestamp": "2024-05-02T16:50:06.123Z",
        "SignatureVersion": "1",
        # anymail 15.2 does not verify the SNS signature; the basic auth is what authenticates SNS.
        "Signature": "EXAMPLEpH+DcEwjAPg8O9mY8dReBSwksfg2S7WKQcikcNKWLQjwu6A4VbeS0QHVCkhRS7fUQvi2egU3N858fiTDN6b==",
        "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-0000000000000000000000.pem",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:assent-ses-events:0b0c0d0e",
    }
    return Post(
        "/webhooks/anymail/amazon_ses/tracking/",
        json.dumps(notification).encode(),
        content_type="text/plain; charset=UTF-8",  # as SNS sends it
        headers={
            "HTTP_X_AMZ_SNS_MESSAGE_TYPE": "Notification",
            "HTTP_X_AMZ_SNS_MESSAGE_ID": sns_id,
            "HTTP_X_AMZ_SNS_TOPIC_ARN": notification["TopicArn"],
        },
    )


def ses_bounce(recipients: tuple[str, ...] = (RECIPIENT,)) -> Post:
    return _sns(
        {
            "eventType": "Bounce",
            "bounce": {
                "feedbackId": "0102018f3a1b2c3d-4e5f6a7b-8c9d-4e0f-a1b2-c3d4e5f6a7b8-000000",
                "bounceType": "Permanent",
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": address,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": f"smtp; {BOUNCE_TEXT}",
                    }
                    for address in recipients
                ],
                "timestamp": "2024-05-02T16:50:05.000Z",
                "reportingMTA": "dsn; a1-2.smtp-out.eu-west-1.amazonses.com",
            },
            "mail": {
                "timestamp": "2024-05-02T16:50:04.000Z",
                "source": "news@acme.example",
                "sendingAccountId": "123456789012",
                "messageId": "0102018f3a1b2c3d-11111111-2222-3333-4444-555555555555-000000",
                "destination": list(recipients),
                "headersTruncated": False,
                "headers": [
                    {"name": "From", "value": "Acme Tea <news@acme.example>"},
                    {"name": "To", "value": ", ".join(recipients)},
                    {"name": "Message-ID", "value": OUR_MESSAGE_ID},
                    {"name": "X-Metadata", "value": json.dumps({"assent_delivery": "42"})},
                ],
                "commonHeaders": {
                    "from": ["Acme Tea <news@acme.example>"],
                    "to": list(recipients),
                    "messageId": OUR_MESSAGE_ID,
                    "subject": "Spring teas are here",
                },
                "tags": {"ses:configuration-set": ["assent"]},
            },
        }
    )


def brevo_bounce() -> Post:
    event = {
        "event": "hard_bounce",
        "email": RECIPIENT,
        "id": 912345,
        "date": "2024-05-02 18:50:05",
        "ts": 1714668605,
        "message-id": OUR_MESSAGE_ID,
        "ts_event": 1714668605,
        "subject": "Spring teas are here",
        "tag": "campaign",
        "sending_ip": "185.41.28.109",
        "ts_epoch": 1714668605123,
        "reason": BOUNCE_TEXT,
        "X-Mailin-custom": json.dumps({"assent_delivery": "42"}),
    }
    return Post("/webhooks/anymail/brevo/tracking/", json.dumps(event).encode())


BOUNCES: dict[str, Callable[[], Post]] = {
    "postmark": postmark_bounce,
    "sendgrid": sendgrid_bounce,
    "mailgun": mailgun_bounce,
    "amazon_ses": ses_bounce,
    "brevo": brevo_bounce,
}

# What each provider's bounce must be recorded as (beyond what all of them share).
EXPECTED: dict[str, dict[str, Any]] = {
    "postmark": {
        "event_id": "4323372036854775807",
        "provider_message_id": "883953f4-6105-42a2-a16a-77a8eac79483",
        "message_id": "",
        "description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "occurred_at": datetime(2024, 5, 2, 16, 50, 5, tzinfo=UTC),
    },
    "sendgrid": {
        "event_id": "ZGVsaXZlcmVkLTAtMjQ1MzcyNTYtbVBWMVpKWjRReS1XSHpPLVlHcVlTUS0w",
        "provider_message_id": "3c2f4a1e-5b6d-4e8f-9a0b-1c2d3e4f5a6b",
        "message_id": OUR_MESSAGE_ID,
        "description": "",
        "occurred_at": datetime(2024, 5, 2, 16, 50, 5, tzinfo=UTC),
    },
    "mailgun": {
        "event_id": MAILGUN_TOKEN,
        "provider_message_id": OUR_MESSAGE_ID,
        "message_id": OUR_MESSAGE_ID,
        "description": "",
        "occurred_at": datetime(2024, 5, 2, 16, 50, 5, 123000, tzinfo=UTC),
    },
    "amazon_ses": {
        "event_id": f"7b0ad2a5-5d9b-5b0a-8d51-2f3c6ce6f8a1:{RECIPIENT.lower()}",
        "provider_message_id": "0102018f3a1b2c3d-11111111-2222-3333-4444-555555555555-000000",
        "message_id": OUR_MESSAGE_ID,
        "description": "Permanent: General",
        "occurred_at": datetime(2024, 5, 2, 16, 50, 6, 123000, tzinfo=UTC),
    },
    "brevo": {
        "provider_message_id": OUR_MESSAGE_ID,
        "message_id": OUR_MESSAGE_ID,
        "description": "",
        "occurred_at": datetime(2024, 5, 2, 16, 50, 5, 123000, tzinfo=UTC),
    },
}


# --- Authentication ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", BOUNCES)
def test_a_request_without_credentials_is_refused_and_changes_nothing(client: Client, provider: str) -> None:
    before = db_snapshot()
    response = _send(client, BOUNCES[provider](), secret=None)
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Basic")
    assert db_snapshot() == before


@pytest.mark.parametrize("provider", BOUNCES)
def test_a_wrong_secret_is_refused(client: Client, provider: str) -> None:
    response = _send(client, BOUNCES[provider](), secret="assent:guessed")
    assert response.status_code == 401
    assert not DeliveryEvent.objects.exists()


@pytest.mark.parametrize("secret", [OLD_SECRET, NEW_SECRET])
def test_either_secret_is_accepted_while_rotating(client: Client, secret: str) -> None:
    assert _send(client, postmark_bounce(), secret=secret).status_code == 200
    assert DeliveryEvent.objects.count() == 1


def test_with_no_secret_configured_every_request_is_refused(client: Client, webhook_settings: dict[str, Any]) -> None:
    webhook_settings["WEBHOOK_SECRET"] = []
    before = db_snapshot()
    for make in BOUNCES.values():
        assert _send(client, make()).status_code == 403
    assert db_snapshot() == before


def test_a_mailgun_event_with_a_wrong_signature_is_refused(client: Client) -> None:
    response = _send(client, mailgun_bounce(key="someone-elses-key"))
    assert response.status_code == 400
    assert not DeliveryEvent.objects.exists()


def _sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, base64.b64encode(der).decode()


def _sendgrid_signed(post: Post, private: ec.EllipticCurvePrivateKey, timestamp: str = "1714668605") -> Post:
    signature = private.sign(timestamp.encode() + post.body, ec.ECDSA(hashes.SHA256()))
    post.headers = {
        "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_SIGNATURE": base64.b64encode(signature).decode(),
        "HTTP_X_TWILIO_EMAIL_EVENT_WEBHOOK_TIMESTAMP": timestamp,
    }
    return post


def test_a_signed_sendgrid_event_is_accepted_and_a_forged_one_refused(
    client: Client, webhook_settings: dict[str, Any]
) -> None:
    private, public = _sendgrid_keys()
    webhook_settings["SENDGRID_TRACKING_WEBHOOK_VERIFICATION_KEY"] = public
    forger, _ = _sendgrid_keys()
    assert _send(client, _sendgrid_signed(sendgrid_bounce(), forger)).status_code == 400
    assert _send(client, sendgrid_bounce()).status_code == 400  # unsigned
    assert not DeliveryEvent.objects.exists()
    assert _send(client, _sendgrid_signed(sendgrid_bounce(), private)).status_code == 200
    assert DeliveryEvent.objects.count() == 1


# --- Recording ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", BOUNCES)
def test_a_hard_bounce_is_recorded_once_with_what_the_provider_said(client: Client, provider: str) -> None:
    response = _send(client, BOUNCES[provider]())
    assert response.status_code == 200
    [event] = DeliveryEvent.objects.all()
    expected = EXPECTED[provider]
    assert event.provider == provider
    assert event.event_type == "bounced"
    assert event.reject_reason == ("" if provider == "sendgrid" else "bounced")  # anymail leaves SendGrid's blank
    assert event.smtp_status == "5.1.1"
    assert BOUNCE_TEXT in event.details["mta_response"]
    assert event.details["delivery_id"] == 42
    assert event.details["recipient_hash"] == email_hash("dana.bounce@example.com")
    assert event.kind == DeliveryEvent.Kind.UNPROCESSED  # recorded only; processing is queued after commit
    for name, value in expected.items():
        assert getattr(event, name) == value, name
    if provider == "brevo":  # Brevo gives no event id: a digest of the report stands in for it
        assert event.event_id.startswith("sha256:")


@pytest.mark.parametrize("provider", BOUNCES)
def test_a_replayed_event_changes_nothing(client: Client, provider: str) -> None:
    assert _send(client, BOUNCES[provider]()).status_code == 200
    before = db_snapshot()
    assert _send(client, BOUNCES[provider]()).status_code == 200  # the provider must not retry it
    assert db_snapshot() == before
    assert DeliveryEvent.objects.count() == 1


def test_processing_is_queued_once_after_commit_and_not_for_a_replay(
    client: Client, django_capture_on_commit_callbacks: Any
) -> None:
    with django_capture_on_commit_callbacks() as first:
        _send(client, postmark_bounce())
    with django_capture_on_commit_callbacks() as replay:
        _send(client, postmark_bounce())
    assert len(first) == 1
    assert replay == []


def test_an_ses_bounce_for_two_recipients_records_each(client: Client) -> None:
    _send(client, ses_bounce(recipients=("one@example.com", "two@example.org")))
    hashes_ = set(DeliveryEvent.objects.values_list("details__recipient_hash", flat=True))
    assert hashes_ == {email_hash("one@example.com"), email_hash("two@example.org")}


def test_a_complaint_is_recorded_as_a_complaint(client: Client) -> None:
    event = {
        "RecordType": "SpamComplaint",
        "MessageStream": "broadcast",
        "ID": 42,
        "Type": "SpamComplaint",
        "TypeCode": 512,
        "MessageID": "00000000-0000-0000-0000-000000000000",
        "Metadata": {"assent_delivery": "7"},
        "Description": "The subscriber explicitly marked this message as spam.",
        "Email": "john@example.com",
        "From": "news@acme.example",
        "BouncedAt": "2024-05-02T17:00:00Z",
    }
    _send(client, Post("/webhooks/anymail/postmark/tracking/", json.dumps(event).encode()))
    [recorded] = DeliveryEvent.objects.all()
    assert (recorded.event_type, recorded.reject_reason, recorded.details["delivery_id"]) == ("complained", "spam", 7)


def test_metadata_that_is_not_a_delivery_id_is_not_taken_for_one(client: Client) -> None:
    body = json.loads(postmark_bounce().body)
    body["Metadata"] = {"assent_delivery": "42; DROP TABLE"}
    _send(client, Post("/webhooks/anymail/postmark/tracking/", json.dumps(body).encode()))
    assert "delivery_id" not in DeliveryEvent.objects.get().details


# --- Inbound: bounce reports sent to an address the provider receives for -----------------------------

DSN = (
    "From: Mail Delivery System <MAILER-DAEMON@mx.example.com>\r\n"
    "To: bounces@mail.acme.example\r\n"
    "Subject: Undelivered Mail Returned to Sender\r\n"
    "Date: Thu, 02 May 2024 16:50:05 +0000\r\n"
    "Message-ID: <20240502165005.ABC123@mx.example.com>\r\n"
    "MIME-Version: 1.0\r\n"
    'Content-Type: multipart/report; report-type=delivery-status; boundary="dsn-boundary"\r\n'
    "\r\n"
    "--dsn-boundary\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n"
    "\r\n"
    "Your message could not be delivered to one or more recipients.\r\n"
    "\r\n"
    "--dsn-boundary\r\n"
    "Content-Type: message/delivery-status\r\n"
    "\r\n"
    "Reporting-MTA: dns; mx.example.com\r\n"
    "Arrival-Date: Thu, 02 May 2024 16:50:04 +0000\r\n"
    "\r\n"
    "Final-Recipient: rfc822; dana.bounce@example.com\r\n"
    "Original-Recipient: rfc822; dana.bounce@example.com\r\n"
    "Action: failed\r\n"
    "Status: 5.1.1\r\n"
    "Diagnostic-Code: smtp; 550 5.1.1 <dana.bounce@example.com>: Recipient address rejected: User unknown\r\n"
    "\r\n"
    "--dsn-boundary\r\n"
    "Content-Type: text/rfc822-headers\r\n"
    "\r\n"
    "From: Acme Tea <news@acme.example>\r\n"
    "To: dana.bounce@example.com\r\n"
    "Subject: Spring teas are here\r\n"
    f"Message-ID: {OUR_MESSAGE_ID}\r\n"
    "\r\n"
    "--dsn-boundary--\r\n"
)


_NEEDS_DSN = pytest.mark.skipif(
    importlib.util.find_spec("campaigns.dsn") is None, reason="campaigns.dsn (the report parser) is missing"
)


def _postmark_inbound(raw: str) -> Post:
    event = {
        "FromName": "Mail Delivery System",
        "MessageStream": "inbound",
        "From": "MAILER-DAEMON@mx.example.com",
        "FromFull": {"Email": "MAILER-DAEMON@mx.example.com", "Name": "Mail Delivery System", "MailboxHash": ""},
        "To": "bounces@mail.acme.example",
        "ToFull": [{"Email": "bounces@mail.acme.example", "Name": "", "MailboxHash": ""}],
        "Cc": "",
        "CcFull": [],
        "Bcc": "",
        "BccFull": [],
        "OriginalRecipient": "bounces@mail.acme.example",
        "Subject": "Undelivered Mail Returned to Sender",
        "MessageID": "5a7b1f8e-0000-4000-8000-000000000001",
        "ReplyTo": "",
        "MailboxHash": "",
        "Date": "Thu, 02 May 2024 16:50:05 +0000",
        "TextBody": "Your message could not be delivered to one or more recipients.",
        "HtmlBody": "",
        "StrippedTextReply": "",
        "Tag": "",
        "Headers": [{"Name": "Return-Path", "Value": "<>"}],
        "Attachments": [],
        "RawEmail": raw,
    }
    return Post("/webhooks/anymail/postmark/inbound/", json.dumps(event).encode())


@_NEEDS_DSN
def test_an_inbound_message_that_is_not_a_report_records_nothing(client: Client) -> None:
    reply = "From: Dana <dana@example.com>\r\nTo: bounces@mail.acme.example\r\nSubject: Re: tea\r\n\r\nThanks!\r\n"
    assert _send(client, _postmark_inbound(reply)).status_code == 200
    assert not DeliveryEvent.objects.exists()


@_NEEDS_DSN
def test_an_inbound_delivery_status_notification_is_recorded_once(client: Client) -> None:
    assert _send(client, _postmark_inbound(DSN)).status_code == 200
    assert _send(client, _postmark_inbound(DSN)).status_code == 200
    [event] = DeliveryEvent.objects.all()
    assert event.provider == "postmark"
    assert event.smtp_status == "5.1.1"
    assert event.details["recipient_hash"] == email_hash("dana.bounce@example.com")
