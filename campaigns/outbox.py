"""The dev outbox: a real SMTP server (aiosmtpd) that keeps mail in a Maildir,
and pages that show it in the browser while DEBUG is on.

``make run`` starts the server (``manage.py devoutbox``) when ``EMAIL_URL`` is
unset, so development mail takes the same SMTP path as production mail.
"""

from __future__ import annotations

import email.policy
import logging
import mailbox
import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

log = logging.getLogger(__name__)

_LINK = re.compile(r"https?://[^\s<>\"')\]]+")


def _maildir(directory: Path) -> mailbox.Maildir:
    for sub in ("cur", "new", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    return mailbox.Maildir(directory, create=False)


class MaildirHandler:
    """aiosmtpd handler: store every accepted message, envelope recipients included."""

    def __init__(self, directory: Path) -> None:
        self.maildir = _maildir(directory)

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        header = f"X-Envelope-From: {envelope.mail_from}\r\nX-Envelope-To: {', '.join(envelope.rcpt_tos)}\r\n"
        self.maildir.add(header.encode() + content)
        log.info("outbox: accepted a message for %s", ", ".join(envelope.rcpt_tos))
        return "250 Message accepted for delivery"


def start_server(directory: Path, *, host: str = "127.0.0.1", port: int = 1025) -> Controller:
    controller = Controller(MaildirHandler(directory), hostname=host, port=port)
    controller.start()
    return controller


@dataclass(frozen=True)
class OutboxMessage:
    key: str
    message: EmailMessage
    received: datetime | None

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return str(self.message.get("To", ""))

    @property
    def sender(self) -> str:
        return str(self.message.get("From", ""))

    def part(self, subtype: str) -> str:
        body = self.message.get_body(preferencelist=(subtype,))
        return body.get_content() if body is not None else ""

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [(k, str(v)) for k, v in self.message.items()]

    @property
    def links(self) -> list[str]:
        found = _LINK.findall(self.text) + _LINK.findall(self.html)
        return list(dict.fromkeys(link.rstrip(".,;") for link in found))


def _parse(key: str, raw: bytes) -> OutboxMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    try:
        received = parsedate_to_datetime(str(message["Date"])) if message["Date"] else None
    except (TypeError, ValueError):
        received = None
    return OutboxMessage(key=key, message=message, received=received)


def read_all(directory: Path, limit: int = 200) -> list[OutboxMessage]:
    box = _maildir(directory)
    messages = [_parse(key, box.get_bytes(key)) for key in box.iterkeys()]
    messages.sort(key=lambda m: (m.received is not None, m.received or datetime.min), reverse=True)
    return messages[:limit]


def read_one(directory: Path, key: str) -> OutboxMessage | None:
    box = _maildir(directory)
    try:
        return _parse(key, box.get_bytes(key))
    except KeyError:
        return None


def clear(directory: Path) -> None:
    _maildir(directory).clear()
