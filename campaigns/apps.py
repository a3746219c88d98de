from __future__ import annotations

from django.apps import AppConfig


class CampaignsConfig(AppConfig):
    name = "campaigns"
    verbose_name = "Campaigns and delivery"

    def ready(self) -> None:
        from anymail.signals import inbound, tracking

        from campaigns import webhooks

        tracking.connect(webhooks.on_tracking, dispatch_uid="campaigns.webhooks.on_tracking")
        inbound.connect(webhooks.on_inbound, dispatch_uid="campaigns.webhooks.on_inbound")
