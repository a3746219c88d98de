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
    message_id = models.CharField(max_length=255, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["campaign", "subscriber"], name="delivery_unique_campaign_subscriber")
        ]
        indexes = [
            models.Index(fields=["campaign", "status", "id"], name="delivery_campaign_status"),
            models.Index(fields=["subscriber", "sent_at"], name="delivery_subscriber_sent"),
            models.Index(fields=["status", "lease_until"], name="delivery_status_lease"),
        ]

    def __str__(self) -> str:
        return f"{self.campaign_id}→{self.subscriber_id} ({self.status})"


class DeliveryEvent(models.Model):
    """What happened to a delivery after it left: from providers, bounces, clicks."""

    class Kind(models.TextChoices):
        DELIVERED = "delivered", _("Delivered")
        BOUNCED = "bounced", _("Bounced")
        COMPLAINED = "complained", _("Complained")
        OPENED = "opened", _("Opened")
        CLICKED = "clicked", _("Clicked")
        UNSUBSCRIBED = "unsubscribed", _("Unsubscribed")

    delivery = models.ForeignKey(Delivery, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    provider = models.CharField(max_length=40, blank=True)
    event_id = models.CharField(max_length=255, blank=True)
    details = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["provider", "event_id"],
                condition=~models.Q(event_id=""),
                name="deliveryevent_unique_provider_event",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.delivery_id}"
