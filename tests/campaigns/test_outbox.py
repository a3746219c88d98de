"""The dev outbox: a real SMTP server storing mail, and the pages that show it."""

from __future__ import annotations

import smtplib
from pathlib import Path
from typing import Any

import pytest
from django.core.mail import EmailMultiAlternatives
from django.test import Client

from campaigns import outbox
from tests.mailserver import free_port


@pytest.fixture
def outbox_dir(tmp_path: Path, settings: Any) -> Path:
    settings.DEV_OUTBOX_DIR = tmp_path / "outbox"
    settings.ROOT_URLCONF = "tests.campaigns.outbox_urls"
    return settings.DEV_OUTBOX_DIR


def _send_through_smtp(port: int) -> None:
    message = EmailMultiAlternatives(
        subject="Please confirm",
        body="Open http://127.0.0.1:8000/c/abc/ to confirm.",
        from_email="Acme <news@acme.example>",
        to=["dana@example.com"],
    )
    message.attach_alternative(
        '<p><a href="http://127.0.0.1:8000/c/abc/">Confirm</a><script>x()</script></p>', "text/html"
    )
    with smtplib.SMTP("127.0.0.1", port) as smtp:
        smtp.send_message(message.message())


@pytest.mark.django_db
def test_mail_sent_to_the_outbox_server_is_shown_in_the_browser(outbox_dir: Path, client: Client) -> None:
    port = free_port()
    server = outbox.start_server(outbox_dir, port=port)
    try:
        _send_through_smtp(port)
    finally:
        server.stop()
    index = client.get("/dev/outbox/")
    assert index.status_code == 200
    assert b"Please confirm" in index.content
    [message] = outbox.read_all(outbox_dir)
    detail = client.get(f"/dev/outbox/{message.key}/").content.decode()
    assert 'href="http://127.0.0.1:8000/c/abc/"' in detail  # links are clickable
    assert "X-Envelope-To" in detail
    assert "dana@example.com" in detail
    assert "Open http://127.0.0.1:8000/c/abc/ to confirm." in detail
    html = client.get(f"/dev/outbox/{message.key}/html/")
    assert "sandbox" in html["Content-Security-Policy"]  # the mail's own scripts never run
    assert b'<base target="_top">' in html.content
    raw = client.get(f"/dev/outbox/{message.key}/raw/")
    assert b"Subject: Please confirm" in raw.content
    assert client.post("/dev/outbox/clear/").status_code == 302
    assert outbox.read_all(outbox_dir) == []
    assert client.get(f"/dev/outbox/{message.key}/").status_code == 404
