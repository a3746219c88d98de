"""EMAIL_URL selects SMTP or an email provider through anymail; webhook secrets are required in production."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import EmailMessage, get_connection
from django.test import override_settings

from config.env import parse_email_url
from tests.config.test_settings import _manage

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x" * 30 + "-a-long-random-production-secret-value-0123456789",
    "ALLOWED_HOSTS": "lists.example.com",
    "SITE_URL": "https://lists.example.com",
}


@pytest.mark.parametrize(
    ("url", "esp", "anymail"),
    [
        (
            "ses://AKIAEXAMPLE:wJalr%2FK7MDENG%2BbPxRfiCY@?region=eu-west-1",
            "amazon_ses",
            {
                "AMAZON_SES_CLIENT_PARAMS": {
                    "region_name": "eu-west-1",
                    "aws_access_key_id": "AKIAEXAMPLE",
                    "aws_secret_access_key": "wJalr/K7MDENG+bPxRfiCY",
                }
            },
        ),
        (
            "amazon-ses://?region=us-east-1&configuration_set=assent-events",
            "amazon_ses",
            {
                "AMAZON_SES_CLIENT_PARAMS": {"region_name": "us-east-1"},
                "AMAZON_SES_CONFIGURATION_SET_NAME": "assent-events",
            },
        ),
        ("postmark://pm-server-token@", "postmark", {"POSTMARK_SERVER_TOKEN": "pm-server-token"}),
        (
            "postmark://pm-server-token@?message_stream=broadcast",
            "postmark",
            {"POSTMARK_SERVER_TOKEN": "pm-server-token", "POSTMARK_MESSAGE_STREAM": "broadcast"},
        ),
        ("sendgrid://SG.abc.def@", "sendgrid", {"SENDGRID_API_KEY": "SG.abc.def"}),
        (
            "mailgun://key-123@mg.acme.example?region=eu",
            "mailgun",
            {
                "MAILGUN_API_KEY": "key-123",
                "MAILGUN_SENDER_DOMAIN": "mg.acme.example",
                "MAILGUN_API_URL": "https://api.eu.mailgun.net/v3",
            },
        ),
        (
            "mailgun://key-123@",
            "mailgun",
            {"MAILGUN_API_KEY": "key-123", "MAILGUN_API_URL": "https://api.mailgun.net/v3"},
        ),
        ("brevo://xkeysib-123@", "brevo", {"BREVO_API_KEY": "xkeysib-123"}),
    ],
)
def test_provider_urls_select_the_anymail_backend(url: str, esp: str, anymail: dict[str, Any]) -> None:
    config = parse_email_url(url)
    assert config.backend == f"anymail.backends.{esp}.EmailBackend"
    assert (config.esp, config.anymail) == (esp, anymail)


@pytest.mark.parametrize(
    ("url", "attributes"),
    [
        ("ses://AKIAEXAMPLE:secret@?region=eu-west-1", {"client_params.region_name": "eu-west-1"}),
        ("postmark://pm-server-token@", {"server_token": "pm-server-token"}),
        ("sendgrid://SG.abc.def@", {"api_key": "SG.abc.def"}),
        (
            "mailgun://key-123@mg.acme.example?region=eu",
            {"api_key": "key-123", "sender_domain": "mg.acme.example", "api_url": "https://api.eu.mailgun.net/v3/"},
        ),
        ("brevo://xkeysib-123@", {"api_key": "xkeysib-123"}),
    ],
)
@pytest.mark.filterwarnings("ignore::anymail.exceptions.AnymailNotSupportedWarning")
def test_anymail_reads_the_settings_a_provider_url_gives(url: str, attributes: dict[str, str]) -> None:
    config = parse_email_url(url)
    with override_settings(EMAIL_BACKEND=config.backend, ANYMAIL=config.anymail):
        backend = get_connection()  # anymail raises here when a setting it needs is missing or misnamed
    assert type(backend).__module__ == f"anymail.backends.{config.esp}"
    for name, value in attributes.items():
        owner, _, key = name.rpartition(".")
        actual = getattr(backend, owner)[key] if owner else getattr(backend, name)
        assert actual == value, name


class _PostmarkAPI(BaseHTTPRequestHandler):
    received: list[tuple[dict[str, str], dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((dict(self.headers), body))
        answer = {"ErrorCode": 0, "Message": "OK", "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"}
        answer |= {"SubmittedAt": "2024-05-02T16:50:05Z", "To": body["To"]}
        payload = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the base class writes a line to stderr for every request."""


@pytest.fixture
def postmark_api() -> Iterator[HTTPServer]:
    server = HTTPServer(("127.0.0.1", 0), _PostmarkAPI)
    _PostmarkAPI.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_message_sent_through_a_provider_url_reaches_its_api(postmark_api: HTTPServer) -> None:
    config = parse_email_url("postmark://pm-server-token@?message_stream=broadcast")
    api_url = f"http://127.0.0.1:{postmark_api.server_address[1]}/"
    with override_settings(EMAIL_BACKEND=config.backend, ANYMAIL={**config.anymail, "POSTMARK_API_URL": api_url}):
        message = EmailMessage("Spring teas", "They are here.", "news@acme.example", ["dana@example.com"])
        assert message.send() == 1
    [(headers, body)] = _PostmarkAPI.received
    assert headers["X-Postmark-Server-Token"] == "pm-server-token"
    assert (body["To"], body["MessageStream"]) == ("dana@example.com", "broadcast")
    assert message.anymail_status.message_id == "b7bc2f4a-e38e-4336-af7d-e6c392c2f817"  # type: ignore[attr-defined]


def test_console_and_smtp_urls_still_work() -> None:
    assert parse_email_url("console://").backend == "django.core.mail.backends.console.EmailBackend"
    smtp = parse_email_url("smtps://user:p%40ss@mail.example.com?timeout=5")
    assert (smtp.backend, smtp.host, smtp.port, smtp.password, smtp.timeout, smtp.esp) == (
        "django.core.mail.backends.smtp.EmailBackend",
        "mail.example.com",
        465,
        "p@ss",
        5,
        "",
    )


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ses://AKIAEXAMPLE@?region=eu-west-1", "both the access key id and the secret"),
        ("ses://KEY:SECRET@eu-west-1", r"\?region="),
        ("ses://KEY:SECRET@?regoin=eu-west-1", "unknown option"),
        ("postmark://", "needs the API key"),
        ("postmark://token@api.postmarkapp.com", "takes no host"),
        ("postmark://token@?stream=broadcast", "unknown option"),
        ("sendgrid://apikey:SG.abc@", "one key"),
        ("mailgun://key@mg.acme.example?region=asia", "must be us or eu"),
        ("mailgun://key@mg.acme.example:443", "no port or path"),
        ("brevo://key@/v3", "no port or path"),
        ("sparkpost://key@", "not supported"),
        ("smtp://mail.example.com?timeout", "malformed query"),
        ("smtp://mail.example.com?timeout=-1", "at least 1 second"),
    ],
)
def test_malformed_provider_urls_say_what_is_wrong(url: str, message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        parse_email_url(url)


# --- In a real process: what production refuses to start with -----------------------------------------


def test_production_with_a_provider_refuses_to_start_without_a_webhook_secret(tmp_path: Path) -> None:
    result = _manage("check", **PRODUCTION, EMAIL_URL="postmark://token@", ASSENT_VAR_DIR=str(tmp_path))
    assert result.returncode != 0
    assert "ANYMAIL_WEBHOOK_SECRET must be set" in result.stderr


def test_a_webhook_secret_must_be_user_and_password(tmp_path: Path) -> None:
    result = _manage(
        "check", EMAIL_URL="postmark://token@", ANYMAIL_WEBHOOK_SECRET="just-a-password", ASSENT_VAR_DIR=str(tmp_path)
    )
    assert result.returncode != 0
    assert "ANYMAIL_WEBHOOK_SECRET must be user:password" in result.stderr


def test_production_with_mailgun_needs_its_signing_key(tmp_path: Path) -> None:
    result = _manage(
        "check",
        **PRODUCTION,
        EMAIL_URL="mailgun://key@mg.acme.example?region=eu",
        ANYMAIL_WEBHOOK_SECRET="mailgun:s3cret",
        ASSENT_VAR_DIR=str(tmp_path),
    )
    assert result.returncode != 0
    assert "MAILGUN_WEBHOOK_SIGNING_KEY must be set" in result.stderr


def test_production_with_a_provider_and_rotated_secrets_passes_check_deploy(tmp_path: Path) -> None:
    script = (
        "from django.conf import settings; print(settings.EMAIL_BACKEND); print(settings.ANYMAIL['WEBHOOK_SECRET'])"
    )
    env = {
        **PRODUCTION,
        "EMAIL_URL": "brevo://xkeysib-123@",
        "ANYMAIL_WEBHOOK_SECRET": "brevo:old-secret, brevo:new-secret",
        "ASSENT_VAR_DIR": str(tmp_path),
    }
    check = _manage("check", "--deploy", "--fail-level", "WARNING", **env)
    assert check.returncode == 0, check.stderr + check.stdout
    shown = _manage("shell", "-c", script, **env)
    assert shown.stdout.splitlines()[-2:] == [
        "anymail.backends.brevo.EmailBackend",
        "['brevo:old-secret', 'brevo:new-secret']",
    ]
