"""Campaigns and their deliveries.

A ``Delivery`` row per (campaign, subscriber) is the source of truth for a
send: progress, retries and completion are read from these rows, never from
the broker, so losing Redis loses no work. Status changes go through
``campaigns/delivery.py``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from audiences.models import Audience, Brand, Subscriber


class Campaign(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", _("Draft")
        SCHEDULED = "scheduled", _("Scheduled")
        SENDING = "sending", _("Sending")
        PAUSED = "paused", _("Paused")
        SENT = "sent", _("Sent")
        CANCELLED = "cancelled", _("Cancelled")

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="campaigns")
    name = models.CharField(_("name"), max_length=200, help_text=_("Only the team sees this."))
    subject = models.CharField(_("subject"), max_length=255)
    preheader = models.CharField(_("preheader"), max_length=255, blank=True)
    from_name = models.CharField(_("sender name"), max_length=120, blank=True)
    from_email = models.EmailField(_("sender address"), blank=True)
    reply_to = models.EmailField(_("reply-to address"), blank=True)
    html_body = models.TextField(_("HTML body"))
    text_body = models.TextField(_("text body"), blank=True, help_text=_("Derived from the HTML when left empty."))
    audiences = models.ManyToManyField(Audience, related_name="campaigns")
    # [{"field": "attributes.city", "op": "equals", "value": "Berlin"}, ...], all must match.
    segment = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    send_rate = models.PositiveIntegerField(
        _("send rate"), null=True, blank=True, help_text=_("Messages per minute; empty: as fast as possible.")
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    planned_at = models.DateTimeField(null=True, blank=True)
    # When a batch last ran: the reconciler restarts a send whose batches stopped.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    # Deliveries below this id were all claimed once: batches claim from here (delivery._claim).
    claim_from = models.BigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "scheduled_at"], name="campaign_status_scheduled")]

    def __str__(self) -> str:
        return self.name

    @property
    def sender_name(self) -> str:
        return self.from_name or self.brand.from_name

    @property
    def sender_email(self) -> str:
        return self.from_email or self.brand.from_email


class Delivery(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        SENDING = "sending", _("Sending")
        SENT = "sent", _("Sent")
        SKIPPED = "skipped", _("Skipped")
        FAILED = "failed", _("Failed")
        BOUNCED = "bounced", _("Bounced")
        COMPLAINED = "complained", _("Complained")

    campaign = models.ForeignKey(Campaign, on_delete=models.CASCADE, related_name="deliveries")
    subscriber = models.ForeignKey(Subscriber, on_delete=models.CASCADE, related_name="deliveries")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    reason = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    lease_until = models.DateTimeField(null=True, blank=True)
    retry_at = models.DateTimeField(null=True, blank=True)
    # Our Message-ID header; provider_id is the id an email provider (anymail) gave the message.
    message_id = models.CharField(max_length=255, blank=True)
    provider_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "subscriber"], name="delivery_unique_campaign_subscriber")
        ]
        indexes = [
            models.Index(fields=["campaign", "status", "id"], name="delivery_campaign_status"),
            # The batches' claim: the next queued rows of a campaign in id order. Without it PostgreSQL
            # walked the primary key past every row already sent (200 ms a batch at 1,000,000; bench/send.py).
            models.Index(fields=["campaign", "id"], name="delivery_queued", condition=models.Q(status="queued")),
            models.Index(fields=["subscriber", "sent_at"], name="delivery_subscriber_sent"),
            models.Index(fields=["status", "lease_until"], name="delivery_status_lease"),
            # Provider events and bounce reports name a message; these find its delivery.
            models.Index(fields=["message_id"], name="delivery_message_id", condition=~models.Q(message_id="")),
            models.Index(fields=["provider_id"], name="delivery_provider_id", condition=~models.Q(provider_id="")),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}→{self.subscriber_id} ({self.status})"


class DeliveryEvent(models.Model):
    """Something a provider or a bounce report said about a message after it left.

    Written by the webhook's signal handler or the bounce-mailbox reader exactly
    as reported (``event_type`` … ``description``), deduplicated by (provider,
    event_id); ``campaigns/bounces.py`` then classifies it (``kind``), links the
    delivery and subscriber, and acts on it (``processed_at``).
    """

    class Kind(models.TextChoices):
        UNPROCESSED = "", _("Not processed yet")
        DELIVERED = "delivered", _("Delivered")
        BOUNCED = "bounced", _("Hard bounce")
        SOFT_BOUNCE = "soft_bounce", _("Soft bounce")
        POLICY = "policy", _("Refused by policy")
        COMPLAINED = "complained", _("Complaint")
        OPENED = "opened", _("Opened")
        CLICKED = "clicked", _("Clicked")
        UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")
        OTHER = "other", _("Other")

    delivery = models.ForeignKey(Delivery, null=True, blank=True, on_delete=models.CASCADE, related_name="events")
    brand = models.ForeignKey(Brand, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    subscriber = models.ForeignKey(Subscriber, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    provider = models.CharField(max_length=40, blank=True)
    event_id = models.CharField(max_length=255, blank=True)
    # As reported: anymail's normalised event type (bounced, deferred, rejected, complained, …).
    event_type = models.CharField(max_length=20, blank=True)
    reject_reason = models.CharField(max_length=20, blank=True)
    # The enhanced status code (RFC 3463), e.g. "5.1.1", when the report gives one.
    smtp_status = models.CharField(max_length=16, blank=True)
    description = models.CharField(max_length=1000, blank=True)
    message_id = models.CharField(max_length=255, blank=True)
    # The id the provider gave the message (anymail's message_id), or a VERP token.
    provider_message_id = models.CharField(max_length=255, blank=True)
    occurred_at = models.DateTimeField(default=timezone.now)
    kind = models.CharField(max_length=12, choices=Kind.choices, blank=True, default=Kind.UNPROCESSED)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "event_id"],
                condition=~models.Q(event_id=""),
                name="deliveryevent_unique_provider_event",
            )
        ]
        indexes = [
            models.Index(fields=["subscriber", "occurred_at"], name="deliveryevent_sub_occurred"),
            models.Index(fields=["brand", "kind", "occurred_at"], name="deliveryevent_brand_kind"),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event_type} → {self.kind or 'unprocessed'}"


class SendingDay(models.Model):
    """Per brand and day (in the brand's time zone): messages sent, bounces and complaints.

    Counted as it happens (a batch adds its sent count, processing adds each
    bounce or complaint), so the daily rates are a row read, not a scan.
    """

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="sending_days")
    day = models.DateField()
    sent = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    hard_bounces = models.PositiveIntegerField(default=0)
    soft_bounces = models.PositiveIntegerField(default=0)
    complaints = models.PositiveIntegerField(default=0)
    policy_failures = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-day"]
        constraints = [models.UniqueConstraint(fields=["brand", "day"], name="sendingday_unique_brand_day")]

    def __str__(self) -> str:
        return f"{self.brand_id} {self.day}: {self.sent} sent"


class SendingAlert(models.Model):
    """The brand's complaint rate crossed a threshold: a warning, or a stop until an owner acknowledges."""

    class Level(models.TextChoices):
        WARNING = "warning", _("Warning")
        STOP = "stop", _("Sending stopped")

    brand = models.ForeignKey(Brand, on_delete=models.CASCADE, related_name="sending_alerts")
    level = models.CharField(max_length=8, choices=Level.choices)
    day = models.DateField()
    complaint_rate = models.FloatField()
    bounce_rate = models.FloatField()
    sent = models.PositiveIntegerField()
    complaints = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["brand", "day", "level"], name="sendingalert_unique_brand_day_level")
        ]

    def __str__(self) -> str:
        return f"{self.brand_id} {self.level} {self.day} ({self.complaint_rate:.2%})"
