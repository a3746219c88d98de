"""Read bounce and complaint messages: RFC 3464 / 6533 delivery status notifications and RFC 5965 feedback reports.

With plain SMTP, mailbox providers report on our messages by email: a
delivery status notification (DSN) to the envelope sender (our VERP return
path, ``campaigns/verp.py``), or an abuse report (ARF) from a feedback loop.
``parse(raw, provider=...)`` turns one such message into ``bounces.Report``
objects, one per recipient it reports on, for ``bounces.record``. It is used by
the bounce-mailbox reader (``campaigns/mailbox.py``) and the anymail inbound
webhook.

Which delivery a report is about: the VERP token in the addresses the report
was sent to (its HMAC makes it trustworthy); only when no VERP address is
there, our ``X-Assent-Delivery`` header in the returned original message.

Anything that cannot be understood gives ``[]``, never an exception: a bounce
mailbox also receives autoreplies, spam and broken mail.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from email.header import decode_header, make_header
from email.message import Message
from email.parser import HeaderParser
from email.utils import getaddresses, parsedate_to_datetime

from campaigns import verp
from campaigns.bounces import Report, enhanced_status

log = logging.getLogger(__name__)

DELIVERY_HEADER = "X-Assent-Delivery"

_STATUS_PARTS = {"message/delivery-status", "message/global-delivery-status"}
_FEEDBACK_PART = "message/feedback-report"
_ORIGINAL_PARTS = {"message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers"}

# DSN Action → anymail's event type.
_ACTIONS = {
    "failed": "bounced",
    "delayed": "deferred",
    "delivered": "delivered",
    "relayed": "delivered",
    "expanded": "delivered",
}
# ARF Feedback-Type → event type: abuse and fraud are the recipient's complaint.
_FEEDBACK = {"abuse": "complained", "fraud": "complained"}

# Where a report names the address it was sent to (ours: VERP carries the delivery).
_ENVELOPE_HEADERS = ("to", "delivered-to", "x-original-to", "envelope-to", "x-envelope-to")
_VERP_SHAPE = re.compile(r"\+d\d+\.[^@]*@")
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")
_DAEMON = re.compile(r"^(mailer-daemon|postmaster|mail-daemon)@", re.IGNORECASE)
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|undelivered|delivery (status )?notification|delivery fail|mail delivery|returned mail|failure notice"
    r"|could not be delivered|non-?delivery",
    re.IGNORECASE,
)
# Plain-text bounces quote the original after a line like "------ This is a copy of the message ------".
_ORIGINAL_MARKER = re.compile(
    r"^[ \t]*-{2,}.*(copy of the message|original message|returned message|below this line|message headers)"
    r".*$",
    re.IGNORECASE | re.MULTILINE,
)


def parse(raw: bytes, *, provider: str) -> list[Report]:
    """One report per recipient this bounce or feedback message reports on; [] when it is not understood."""
    try:
        message = email.message_from_bytes(raw, policy=email.policy.default)
        reports = _reports(message, raw, provider)
    except Exception:  # garbage in a mailbox must not stop the reader
        log.warning("could not parse a %s message as a bounce report", provider, exc_info=True)
        return []
    if not reports:
        log.info("%s message %s is not a bounce report we understand", provider, _header(message, "message-id"))
    return reports


def _reports(message: Message, raw: bytes, provider: str) -> list[Report]:
    parts = list(_parts(message))
    # Without a Message-ID, the bytes identify the report: reading it again is still a replay.
    key = _header(message, "message-id") or "sha256:" + hashlib.sha256(raw).hexdigest()
    source = _Source(message, provider, key, _original(parts))
    feedback_part = _first(parts, {_FEEDBACK_PART})
    if feedback_part is not None:
        return _feedback(feedback_part, source)
    status_part = _first(parts, _STATUS_PARTS)
    reports = _delivery_status(status_part, source) if status_part is not None else []
    return reports or _plain(parts, source)


@dataclass(frozen=True)
class _Source:
    """The message being read, and what all its reports share."""

    message: Message
    provider: str
    key: str
    original: Message | None  # the headers of the message reported on


def _report(
    source: _Source,
    *,
    event_type: str,
    recipient: str,
    occurred_at: datetime | None,
    details: dict[str, str],
    smtp_status: str = "",
    description: str = "",
    envelope_from: tuple[str, ...] = (),
) -> Report:
    delivery_id, delivery_source = _delivery(source, envelope_from)
    details = {k: v for k, v in details.items() if v}
    if delivery_source:
        details["delivery_source"] = delivery_source
    digest = hashlib.sha256(f"{source.key}\n{recipient.lower()}".encode()).hexdigest()
    return Report(
        provider=source.provider,
        event_type=event_type,
        event_id=f"mail:{digest}",
        recipient=recipient,
        message_id=_header(source.original, "message-id"),
        delivery_id=delivery_id,
        smtp_status=smtp_status,
        description=description,
        occurred_at=occurred_at or _date(_header(source.message, "date")),
        details=details,
    )


def _delivery(source: _Source, envelope_from: tuple[str, ...]) -> tuple[int | None, str]:
    """The delivery named by a VERP address, else (with no VERP address at all) by our header; and which."""
    candidates = [v for name in _ENVELOPE_HEADERS for v in _header_all(source.message, name)]
    candidates += [*envelope_from, *_header_all(source.original, "return-path")]
    verp_seen = False
    for _name, address in getaddresses(candidates):
        if _VERP_SHAPE.search(address):
            verp_seen = True
            pk = verp.delivery_id(address)
            if pk is not None:
                return pk, "verp"
    if verp_seen:
        # A VERP address with a wrong signature is forged (or signed with an old key): trust no header either.
        return None, "forged-verp"
    header = _header(source.original, DELIVERY_HEADER.lower())
    if header:
        pk = verp.token_delivery_id(header)
        return (pk, "header") if pk is not None else (None, "forged-header")
    return None, ""


# --- RFC 3464 / 6533 delivery status notifications -------------------------------------------


def _delivery_status(part: Message, source: _Source) -> list[Report]:
    blocks = _field_blocks(part)
    if not blocks:
        return []
    per_message, per_recipient = blocks[0], blocks[1:]
    reporting_mta = _typed_value(per_message.get("reporting-mta", ""))
    if source.original is None and per_message.get("x-original-message-id"):
        # Gmail names the original in the status when it returns none of it.
        source = replace(source, original=_headers(f"Message-ID: {per_message['x-original-message-id']}\n\n"))
    reports = []
    for fields in per_recipient:
        recipient = _address(fields.get("original-recipient", "")) or _address(fields.get("final-recipient", ""))
        action = fields.get("action", "").strip().lower()
        event_type = _ACTIONS.get(action)
        if not recipient or event_type is None:
            continue
        diagnostic = _clean(_typed_value(fields.get("diagnostic-code", "")))
        reports.append(
            _report(
                source,
                event_type=event_type,
                recipient=recipient,
                occurred_at=_date(fields.get("last-attempt-date", "")) or _date(per_message.get("arrival-date", "")),
                smtp_status=_specific_status(enhanced_status(fields.get("status", "")), enhanced_status(diagnostic)),
                description=diagnostic or _human_text(source.message),
                details={"action": action, "reporting_mta": reporting_mta, "mta_response": diagnostic},
            )
        )
    return reports


# --- RFC 5965 feedback reports -----------------------------------------------------------------


def _feedback(part: Message, source: _Source) -> list[Report]:
    blocks = _field_blocks(part)
    fields = blocks[0] if blocks else {}
    feedback_type = fields.get("feedback-type", "").strip().lower()
    if not feedback_type:
        return []
    # The envelope sender of the reported message: our VERP return path.
    envelope_from = tuple(_address(v) for v in _all_values(part, "original-mail-from"))
    recipients = [a for a in (_address(v) for v in _all_values(part, "original-rcpt-to")) if a]
    if not recipients:
        # Many feedback loops redact the recipient; the original's To may still name one address.
        to = [a for _, a in getaddresses(_header_all(source.original, "to")) if "@" in a]
        recipients = to if len(to) == 1 else [""]
    occurred_at = _date(fields.get("arrival-date", "")) or _date(fields.get("received-date", ""))
    description = _human_text(source.message)
    details = {
        "feedback_type": feedback_type,
        "reporting_mta": _typed_value(fields.get("reporting-mta", "")),
        "user_agent": fields.get("user-agent", ""),
        "source_ip": fields.get("source-ip", ""),
    }
    return [
        _report(
            source,
            event_type=_FEEDBACK.get(feedback_type, "other"),
            recipient=recipient,
            occurred_at=occurred_at,
            description=description,
            details=details,
            envelope_from=envelope_from,
        )
        for recipient in recipients
    ]


# --- Everything else: plain-text bounces (best effort) ----------------------------------------


def _plain(parts: list[Message], source: _Source) -> list[Report]:
    """A hard bounce from a message that looks like one and names a 5.x.x status and one recipient."""
    message = source.message
    daemon = any(_DAEMON.match(a) for _, a in getaddresses(_header_all(message, "from")))
    bounce_subject = bool(_BOUNCE_SUBJECT.search(_decoded(_header(message, "subject"))))
    if not (daemon or (_header(message, "return-path") in {"", "<>"} and bounce_subject)):
        return []
    text = "\n".join(_text(p) for p in parts if p.get_content_type() == "text/plain")
    text, quoted = _split_quoted(text)
    if source.original is None and quoted is not None:
        source = replace(source, original=quoted)
    status_line = next((line.strip() for line in text.splitlines() if enhanced_status(line).startswith("5.")), "")
    recipient = _plain_recipient(text, source) if status_line else ""
    if not recipient:
        return []
    diagnostic = _clean(status_line)
    return [
        _report(
            source,
            event_type="bounced",
            recipient=recipient,
            occurred_at=None,
            smtp_status=enhanced_status(status_line),
            description=diagnostic,
            details={"action": "failed", "mta_response": diagnostic},
        )
    ]


def _plain_recipient(text: str, source: _Source) -> str:
    """The one address the text says failed: not ours, not a daemon's; the original's To breaks a tie."""
    failed = [a for _, a in getaddresses(_header_all(source.message, "x-failed-recipients")) if "@" in a]
    if len(failed) == 1:
        return failed[0]  # Exim and Gmail name it in a header
    ours = {a.lower() for h in ("from", *_ENVELOPE_HEADERS) for _, a in getaddresses(_header_all(source.message, h))}
    found: list[str] = []
    for address in _ADDRESS.findall(text):
        lowered = address.lower()
        if lowered in ours or _DAEMON.match(lowered) or _VERP_SHAPE.search(lowered) or lowered in found:
            continue
        found.append(lowered)
    if len(found) == 1:
        return found[0]
    to = {a.lower() for _, a in getaddresses(_header_all(source.original, "to"))}
    matching = [a for a in found if a in to]
    return matching[0] if len(matching) == 1 else ""


def _split_quoted(text: str) -> tuple[str, Message | None]:
    """The bounce's own words, and the headers of the original it quotes inline (if it does)."""
    marker = _ORIGINAL_MARKER.search(text)
    if marker is None:
        return text, None
    quoted = text[marker.end() :].lstrip("\r\n")
    headers = _headers(quoted)
    return text[: marker.start()], headers if len(headers) else None


# --- Helpers -----------------------------------------------------------------------------------


def _parts(message: Message) -> Iterator[Message]:
    """Every part of the report itself, not descending into a returned message."""
    yield message
    if message.get_content_maintype() == "message" or not message.is_multipart():
        return
    for part in message.get_payload():
        if isinstance(part, Message):
            yield from _parts(part)


def _first(parts: list[Message], types: set[str]) -> Message | None:
    return next((p for p in parts[1:] if p.get_content_type() in types), None)


def _original(parts: list[Message]) -> Message | None:
    """The headers of the message being reported on, from a message/rfc822 or text/rfc822-headers part."""
    part = _first(parts, _ORIGINAL_PARTS)
    if part is None:
        return None
    payload = part.get_payload()
    if isinstance(payload, list):
        return payload[0] if payload and isinstance(payload[0], Message) else None
    return _headers(_text(part))


def _headers(text: str) -> Message:
    return HeaderParser(policy=email.policy.default).parsestr(text, headersonly=True)


def _field_blocks(part: Message) -> list[dict[str, str]]:
    """The groups of ``Name: value`` fields of a status or feedback part (per-message first, then per-recipient).

    The email package parses message/delivery-status into one sub-message per
    group; other message/* types into a single sub-message whose body holds the
    remaining groups (RFC 6533's global status is UTF-8).
    """
    blocks: list[dict[str, str]] = []
    payload = part.get_payload()
    subs = [sub for sub in payload if isinstance(sub, Message)] if isinstance(payload, list) else []
    for sub in subs:
        blocks.append({k.lower(): _unfold(v) for k, v in sub.raw_items()})
        body = sub.get_payload(decode=True)
        if isinstance(body, bytes) and body.strip():
            blocks.extend(_text_blocks(body.decode("utf-8", "replace")))
    if not subs and isinstance(payload, str):
        blocks = _text_blocks(payload)
    return [b for b in blocks if b]


def _text_blocks(text: str) -> list[dict[str, str]]:
    blocks = []
    for chunk in re.split(r"\r?\n[ \t]*\r?\n", text):
        fields: dict[str, str] = {}
        name = ""
        for line in chunk.splitlines():
            if line[:1] in {" ", "\t"} and name:
                fields[name] += " " + line.strip()
            elif ":" in line:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                fields.setdefault(name, value.strip())
        blocks.append(fields)
    return blocks


def _all_values(part: Message, name: str) -> list[str]:
    """Every value of a field that may repeat in a feedback report (Original-Rcpt-To)."""
    payload = part.get_payload()
    values: list[str] = []
    for sub in payload if isinstance(payload, list) else []:
        if isinstance(sub, Message):
            values += [_unfold(v) for k, v in sub.raw_items() if k.lower() == name]
    return values


def _header(message: Message | None, name: str) -> str:
    values = _header_all(message, name)
    return values[0] if values else ""


def _header_all(message: Message | None, name: str) -> list[str]:
    # raw_items: the policy's header parsers raise on some malformed values, and we only need the text.
    if message is None:
        return []
    return [_unfold(v) for k, v in message.raw_items() if k.lower() == name]


def _unfold(value: object) -> str:
    return re.sub(r"\r?\n[ \t]*", " ", str(value)).strip()


def _decoded(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def _typed_value(value: str) -> str:
    """``dns; mx.example.com`` → ``mx.example.com`` (RFC 3464 typed fields)."""
    kind, semicolon, rest = value.partition(";")
    return rest.strip() if semicolon else kind.strip()


def _address(value: str) -> str:
    address = _typed_value(value).strip("<> ")
    return address if "@" in address and " " not in address else ""


def _clean(text: str, limit: int = 1000) -> str:
    return " ".join(text.split())[:limit]


def _text(part: Message) -> str:
    body = part.get_payload(decode=True)
    if not isinstance(body, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return body.decode(charset, "replace")
    except LookupError:
        return body.decode("utf-8", "replace")


def _human_text(message: Message) -> str:
    """The first plain-text explanation in the report, collapsed and trimmed."""
    for part in _parts(message):
        if part.get_content_type() == "text/plain":
            return _clean(_text(part), 500)
    return ""


def _specific_status(status: str, diagnostic: str) -> str:
    """The Status field, unless it is generic (Exim always says 5.0.0) and the server's reply is more specific."""
    if not status or (status.endswith(".0.0") and diagnostic[:1] == status[:1]):
        return diagnostic or status
    return status


def _date(value: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
