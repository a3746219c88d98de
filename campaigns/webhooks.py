"""anymail signal handlers: what an email provider's webhook reports becomes a recorded ``bounces.Report``.

The handlers only record (``bounces.record``: one ``DeliveryEvent`` per provider
and event id, processing queued after commit), so the provider gets its answer
fast and a replayed event changes nothing. Connected in ``CampaignsConfig.ready``;
the webhook URLs and their authentication are in ``campaigns/webhook_urls.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from django.utils import timezone

from campaigns import bounces

# The id anymail metadata carries on every campaign message (set when it is sent).
DELIVERY_METADATA_KEY = "assent_delivery"
_DELIVERY_ID = re.compile(r"[0-9]{1,18}")


def provider_name(esp_name: str) -> str:
    """anymail's ESP name as a provider key: "Amazon SES" -> "amazon_ses", as in the webhook URL."""
    return esp_name.strip().lower().replace(" ", "_")


def report_from_tracking(event: Any, esp_name: str) -> bounces.Report:
    """The ``Report`` for one ``AnymailTrackingEvent``."""
    provider = provider_name(esp_name)
    mta_response = str(event.mta_response or "")
    description = str(event.description or "")
    event_id = str(event.event_id or "")
    if event_id and provider == "amazon_ses":
        # SES reports every recipient of one notification under the notification's id.
        event_id = f"{event_id}:{(event.recipient or '').lower()}"
    return bounces.Report(
        provider=provider,
        event_type=str(event.event_type or "unknown"),
        event_id=event_id,
        recipient=str(event.recipient or ""),
        message_id=_header_message_id(provider, event.esp_event),
        provider_message_id=str(event.message_id or ""),
        delivery_id=_delivery_id(event.metadata),
        reject_reason=str(event.reject_reason or ""),
        # The MTA's own words are the better source of the status code than a summary.
        smtp_status=bounces.enhanced_status(mta_response, description),
        description=description,
        occurred_at=_aware(event.timestamp),
        details={"mta_response": mta_response} if mta_response else {},
    )


def on_tracking(sender: object, event: Any, esp_name: str, **kwargs: Any) -> None:
    """anymail ``tracking`` signal: record the event (a replay is ignored by ``record``)."""
    bounces.record(report_from_tracking(event, esp_name))


def on_inbound(sender: object, event: Any, esp_name: str, **kwargs: Any) -> None:
    """anymail ``inbound`` signal: bounce and complaint reports sent to our inbound address are recorded.

    ``dsn.parse`` decides what is a report (RFC 3464 DSNs, RFC 5965 feedback
    reports, plain-text bounces) and gives nothing for anything else (replies,
    auto-replies), which is not ours to keep and is dropped.
    """
    if event.message is None:
        return
    # Imported here so the tracking webhooks never depend on the report parser loading.
    from campaigns import dsn

    for report in dsn.parse(event.message.as_bytes(), provider=provider_name(esp_name)):  # logs what it ignores
        bounces.record(report)


def _delivery_id(metadata: Any) -> int | None:
    value = metadata.get(DELIVERY_METADATA_KEY) if isinstance(metadata, dict) else None
    if isinstance(value, int | str) and _DELIVERY_ID.fullmatch(str(value)):
        return int(value)
    return None


def _header_message_id(provider: str, esp_event: Any) -> str:
    """Our Message-ID header, where the provider's event repeats the original headers."""
    paths = {
        "amazon_ses": ("mail", "commonHeaders", "messageId"),
        "mailgun": ("event-data", "message", "headers", "message-id"),
        "sendgrid": ("smtp-id",),
        "brevo": ("message-id",),
        "sendinblue": ("message-id",),
    }
    value: Any = esp_event
    for key in paths.get(provider, ("-",)):
        value = value.get(key) if isinstance(value, dict) else None
    return value.strip() if isinstance(value, str) else ""


def _aware(moment: Any) -> datetime | None:
    if not isinstance(moment, datetime):
        return None
    return moment if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)
