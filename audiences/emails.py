"""Transactional emails built from ``templates/emails/<name>/``.

Every message Assent writes itself (not brand-written campaigns) is built here
by ``make_message``: a subject, a text part and an HTML part with its CSS inlined.
"""

from __future__ import annotations

from email.utils import formataddr, make_msgid, parseaddr
from typing import Any

import css_inline
from django.core.mail import EmailMultiAlternatives
from django.template.loader import render_to_string
from django.utils import translation

from audiences.models import Brand

_inliner = css_inline.CSSInliner(keep_style_tags=False, load_remote_stylesheets=False)


def _single_line(value: str) -> str:
    """Header values never carry CR/LF, whatever reached us."""
    return " ".join(value.split())


def _message_id(from_email: str) -> str:
    """A unique Message-ID in the sender's domain (not this host's name)."""
    domain = parseaddr(from_email)[1].rpartition("@")[2] or "localhost"
    return make_msgid(domain=domain)


def brand_sender(brand: Brand) -> str:
    return formataddr((_single_line(brand.from_name), brand.from_email))


def to_payload(message: EmailMultiAlternatives) -> dict[str, Any]:
    """A JSON-safe form of a built message, for sending it from a task."""
    return {
        "subject": message.subject,
        "body": message.body,
        "from_email": message.from_email,
        "to": list(message.to),
        "reply_to": list(message.reply_to),
        "headers": dict(message.extra_headers),
        "alternatives": [[str(content), mimetype] for content, mimetype in message.alternatives],
    }


def from_payload(payload: dict[str, Any]) -> EmailMultiAlternatives:
    message = EmailMultiAlternatives(
        subject=payload["subject"],
        body=payload["body"],
        from_email=payload["from_email"],
        to=payload["to"],
        reply_to=payload["reply_to"] or None,
        headers=payload["headers"],
    )
    for content, mimetype in payload["alternatives"]:
        message.attach_alternative(content, mimetype)
    return message


def send_later(message: EmailMultiAlternatives) -> None:
    """Send a team/account email from a worker once the current transaction commits.

    A mail server that is down then costs a retry, not an error page.
    """
    from django.db import transaction

    from audiences.tasks import send_prepared_email

    payload = to_payload(message)
    transaction.on_commit(lambda: send_prepared_email.delay(payload))


def make_message(
    name: str,
    *,
    to: str,
    to_name: str = "",
    context: dict[str, Any],
    from_email: str,
    reply_to: str = "",
    language: str = "en",
    headers: dict[str, str] | None = None,
) -> EmailMultiAlternatives:
    with translation.override(language):
        subject = _single_line(render_to_string(f"emails/{name}/subject.txt", context))
        text = render_to_string(f"emails/{name}/body.txt", context)
        html = _inliner.inline(render_to_string(f"emails/{name}/body.html", context))
    message = EmailMultiAlternatives(
        subject=subject,
        body=text,
        from_email=from_email,
        to=[formataddr((_single_line(to_name), to))],
        reply_to=[reply_to] if reply_to else None,
        headers={"Message-ID": _message_id(from_email), "Auto-Submitted": "auto-generated", **(headers or {})},
    )
    message.attach_alternative(html, "text/html")
    return message
