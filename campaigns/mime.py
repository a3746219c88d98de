"""A campaign's messages, built fast: what is the same for every recipient is built once.

Serialising a message through Django's email classes and the ``email``
package's generator (header folding, a policy per part) cost about 1.2 ms per
message in ``bench/send.py``, more than everything else a batch does. A campaign
message has a fixed shape: a ``multipart/alternative`` of a text and an HTML
part, a few headers that differ per recipient (To, Subject when templated,
Message-ID, List-Unsubscribe, X-Assent-Delivery) and the rest shared. So
``CampaignMessages`` encodes the shared headers once and writes each message's
bytes directly, with the same transfer encodings Django would choose (7bit or
8bit UTF-8, quoted-printable when a line is longer than 998 octets) and
RFC 2047 encoded words for non-ASCII header text. The bytes go to the SMTP
connection as they are (``smtplib.SMTP.sendmail``), as Django's SMTP backend
does with its own serialisation.

``django_message`` builds the same message as an ``EmailMultiAlternatives``
for every other email backend (anymail providers, the test outbox), and for
an address whose local part is not ASCII (Django's backend knows SMTPUTF8).
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from email.header import Header
from email.utils import formatdate
from typing import Any

from django.core.mail import EmailMultiAlternatives
from django.utils.encoding import punycode

from audiences import links
from audiences.models import Audience, Subscriber
from campaigns import rendering, verp
from campaigns.models import Campaign, Delivery

_CRLF = "\r\n"
_SPECIALS = re.compile(r'[][\\()<>@,:;".]')


@dataclass(frozen=True)
class Built:
    """One message ready for the wire."""

    envelope_from: str
    recipient: str
    data: bytes
    message_id: str


@dataclass(frozen=True)
class Content:
    """One recipient's rendered message, before serialisation."""

    subject: str
    text: str
    html: str
    to: str
    recipient: str
    envelope_from: str
    message_id: str
    headers: dict[str, str]


def header(name: str, value: str) -> str:
    """``Name: value`` + CRLF; non-ASCII text as RFC 2047 encoded words, folded."""
    if "\r" in value or "\n" in value:
        value = " ".join(value.split())  # never a CR or LF inside a header
    if value.isascii() and len(name) + len(value) < 996:
        return f"{name}: {value}{_CRLF}"
    encoded = Header(value, "utf-8", header_name=name).encode(linesep=_CRLF)
    return f"{name}: {encoded}{_CRLF}"


def address(name: str, email: str) -> str:
    """A display name and an address as one header value.

    The name is quoted when it needs to be, or split into RFC 2047 encoded words of at
    most 75 characters; an IDN domain is written in punycode. A non-ASCII local part
    is kept: only Django's backend sends to such an address (``build`` returns None).
    """
    name = " ".join(name.split())
    local, at, domain = email.rpartition("@")
    if at and not domain.isascii():
        email = f"{local}@{punycode(domain)}"
    if not name:
        return email
    if not name.isascii():
        phrase = " ".join(Header(name, "utf-8", maxlinelen=75).encode().split())  # RFC 2047: words of <= 75
    elif _SPECIALS.search(name):
        phrase = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        phrase = name
    return f"{phrase} <{email}>"


def part(content: str, subtype: str) -> bytes:
    """One ``text/<subtype>`` part, headers and body, with CRLF line ends.

    Like Django: 7bit for ASCII, 8bit UTF-8 otherwise, quoted-printable when a
    line would be longer than SMTP's 998 octets (octets, not characters).
    """
    body = (content.replace("\r\n", "\n").replace("\r", "\n") if "\r" in content else content).encode()
    if len(body) < 999 or max(map(len, body.split(b"\n"))) < 999:
        encoding = "7bit" if body.isascii() else "8bit"
        payload = body.replace(b"\n", b"\r\n")
    else:
        encoding = "quoted-printable"
        payload = binascii.b2a_qp(body, istext=True).replace(b"\n", b"\r\n")
    head = f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {encoding}{_CRLF}{_CRLF}'
    # The CRLF before the next boundary belongs to the boundary (RFC 2046 5.1.1), not to the content.
    return head.encode() + payload + b"\r\n"


class CampaignMessages:
    """Builds every message of one campaign; create one per batch (the Date header is the batch's)."""

    def __init__(self, campaign: Campaign, compiled: rendering.CompiledCampaign, audiences: list[Audience]) -> None:
        self.campaign = campaign
        self.compiled = compiled
        self.audiences = sorted(audiences, key=lambda a: a.pk)
        self.audience_names = sorted(a.name for a in audiences)
        self.sender = address(campaign.sender_name, campaign.sender_email)
        self.sender_email = address("", campaign.sender_email)
        self.domain = self.sender_email.rpartition("@")[2] or "localhost"
        reply_to = campaign.reply_to or campaign.brand.reply_to
        self.reply_to = address("", reply_to) if reply_to else ""
        shared = [header("From", self.sender)]
        if reply_to:
            shared.append(header("Reply-To", self.reply_to))
        shared.append(header("Date", formatdate()))
        shared.append("MIME-Version: 1.0" + _CRLF)
        self._shared = "".join(shared)
        self._subjects: dict[str, str] = {}

    def content(self, d: Delivery) -> Content:
        """Render one delivery's message (the templates were compiled once per campaign)."""
        s: Subscriber = d.subscriber
        unsubscribe_headers = links.unsubscribe_headers(s, self.audiences)
        unsubscribe = unsubscribe_headers["List-Unsubscribe"][1:-1]
        context = rendering.build_context(
            brand=self.campaign.brand,
            subscriber={"email": s.email, "name": s.name, "language": s.language},
            attributes=s.attributes,
            audiences=self.audience_names,
            links={"unsubscribe": unsubscribe, "manage": links.manage_url(s)},
        )
        rendered = self.compiled.render(context)
        return Content(
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            to=address(s.name, s.email),
            recipient=s.email,
            envelope_from=verp.return_path(d.pk) or self.sender_email,
            message_id=f"<d{d.pk}.{secrets.token_hex(6)}@{self.domain}>",
            headers={**unsubscribe_headers, "X-Assent-Delivery": verp.token(d.pk)},
        )

    def build(self, d: Delivery) -> Built | None:
        """The wire bytes of one delivery's message; None when only Django's backend can send it (SMTPUTF8)."""
        c = self.content(d)
        if not c.recipient.isascii():
            return None
        subject = self._subjects.get(c.subject)
        if subject is None:
            subject = self._subjects[c.subject] = header("Subject", c.subject)
        text, html = part(c.text, "plain"), part(c.html, "html")
        boundary = "=_" + secrets.token_hex(12)
        while boundary.encode() in text or boundary.encode() in html:  # pragma: no cover - 96 random bits
            boundary = "=_" + secrets.token_hex(12)
        head = "".join(
            [
                f'Content-Type: multipart/alternative; boundary="{boundary}"{_CRLF}',
                self._shared,
                subject,
                header("To", c.to),
                header("Message-ID", c.message_id),
                *(header(name, value) for name, value in c.headers.items()),
                _CRLF,
            ]
        ).encode()
        delimiter = f"--{boundary}{_CRLF}".encode()
        data = b"".join([head, delimiter, text, delimiter, html, f"--{boundary}--{_CRLF}".encode()])
        return Built(envelope_from=c.envelope_from, recipient=c.recipient, data=data, message_id=c.message_id)

    def django_message(self, d: Delivery, *, smtp: bool = False) -> tuple[EmailMultiAlternatives, str]:
        """The same message for any Django email backend; anymail providers get the delivery id as metadata.

        Over SMTP (``smtp``) the envelope sender is the VERP address, as in ``build``; a provider
        handles bounces itself and reports them by webhook, so it gets the plain sender.
        """
        c = self.content(d)
        message = EmailMultiAlternatives(
            subject=c.subject,
            body=c.text,
            from_email=c.envelope_from if smtp else self.sender,
            to=[c.to],
            reply_to=[self.reply_to] if self.reply_to else None,
            headers={**({"From": self.sender} if smtp else {}), **c.headers, "Message-ID": c.message_id},
        )
        message.attach_alternative(c.html, "text/html")
        metadata: dict[str, Any] = {"assent_delivery": str(d.pk), "assent_campaign": str(self.campaign.pk)}
        message.metadata = metadata  # type: ignore[attr-defined]  # anymail reads it; other backends ignore it
        return message, c.message_id
