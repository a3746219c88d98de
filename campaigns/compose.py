"""Composing campaigns: create and edit drafts, count their recipients, preview and test-send them.

Sending lives in ``campaigns/delivery.py``; this module is everything the team
does before that. Every change records an ``AuditEvent`` in its own
transaction. A draft may be saved with template problems (the editor shows
them with their lines); ``delivery.schedule`` is what refuses to go on.
"""

from __future__ import annotations

from collections.abc import Sequence
from email.utils import formataddr
from typing import Any

from django.contrib.auth.models import User
from django.core.mail import EmailMultiAlternatives
from django.db import transaction
from django.utils.translation import gettext as _

from audiences import audit, links
from audiences.emails import send_later
from audiences.models import Audience, Brand, Subscriber
from campaigns import rendering, targeting
from campaigns.models import Campaign

# The fields a draft's editor changes, in the order the audit log names them.
CONTENT_FIELDS = (
    "name",
    "subject",
    "preheader",
    "from_name",
    "from_email",
    "reply_to",
    "html_body",
    "text_body",
    "send_rate",
)
TEST_HEADER = "X-Assent-Test"


class ComposeError(Exception):
    """A change refused with a message for the team; ``field`` names the form field at fault, if any."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class RenderError(ComposeError):
    """The brand's template failed for this person; ``rendering.check`` says where."""


def _render(campaign: Campaign, context: dict[str, Any]) -> rendering.Rendered:
    try:
        return rendering.compile_campaign(campaign).render(context)
    except Exception as error:  # a brand's template must never take a page down
        raise RenderError(f"{type(error).__name__}: {error}") from error


def _live_audiences(brand: Brand, audiences: Sequence[Audience]) -> list[Audience]:
    """The audiences, checked to be this brand's and not archived (a form can be tampered with)."""
    ids = {a.pk for a in audiences}
    found = list(Audience.objects.filter(brand=brand, archived_at__isnull=True, pk__in=ids))
    if len(found) != len(ids):
        raise ComposeError(_("Choose audiences of this brand that are not archived."), field="audiences")
    return found


def _segment(rules: Any) -> list[dict[str, str]]:
    try:
        return targeting.validate(list(rules))
    except targeting.RuleError as error:
        raise ComposeError(str(error), field="segment") from error


def create_campaign(
    *,
    brand: Brand,
    user: User | None,
    name: str,
    subject: str,
    html_body: str,
    preheader: str = "",
    from_name: str = "",
    from_email: str = "",
    reply_to: str = "",
    text_body: str = "",
    audiences: Sequence[Audience] = (),
    segment: Sequence[dict[str, str]] = (),
    send_rate: int | None = None,
) -> Campaign:
    """A new draft. Empty sender fields mean the brand's; an empty text body is derived from the HTML."""
    chosen = _live_audiences(brand, audiences)
    rules = _segment(segment)
    with transaction.atomic():
        campaign = Campaign.objects.create(
            brand=brand,
            name=name.strip(),
            subject=subject,
            preheader=preheader,
            from_name=from_name,
            from_email=from_email,
            reply_to=reply_to,
            html_body=html_body,
            text_body=text_body,
            segment=rules,
            send_rate=send_rate,
            created_by=user,
        )
        campaign.audiences.set(chosen)
        audit.record(brand=brand, user=user, action="campaign.created", target=campaign.name)
    return campaign


def update_campaign(
    *,
    campaign: Campaign,
    user: User | None,
    name: str,
    subject: str,
    html_body: str,
    preheader: str = "",
    from_name: str = "",
    from_email: str = "",
    reply_to: str = "",
    text_body: str = "",
    audiences: Sequence[Audience] = (),
    segment: Sequence[dict[str, str]] = (),
    send_rate: int | None = None,
) -> Campaign:
    """Replace a draft's content and targeting; the audit log names the fields that changed.

    Refused once the campaign left draft: a scheduled campaign goes back to
    draft (``delivery.unschedule``) before it can change, so what is checked
    at scheduling time is what is sent.
    """
    chosen = _live_audiences(campaign.brand, audiences)
    rules = _segment(segment)
    wanted: dict[str, Any] = {
        "name": name.strip(),
        "subject": subject,
        "preheader": preheader,
        "from_name": from_name,
        "from_email": from_email,
        "reply_to": reply_to,
        "html_body": html_body,
        "text_body": text_body,
        "send_rate": send_rate,
        "segment": rules,
    }
    with transaction.atomic():
        # Lock the row: a concurrent schedule must not slip between our check and our write.
        locked = Campaign.objects.select_for_update().select_related("brand").get(pk=campaign.pk)
        if locked.status != Campaign.Status.DRAFT:
            raise ComposeError(_("Only a draft can be edited: unschedule the campaign first."))
        changed = [key for key, value in wanted.items() if getattr(locked, key) != value]
        old_ids = set(locked.audiences.values_list("pk", flat=True))
        if old_ids != {a.pk for a in chosen}:
            locked.audiences.set(chosen)
            changed.append("audiences")
        if not changed:
            return locked
        for key in changed:
            if key in wanted:
                setattr(locked, key, wanted[key])
        # updated_at is listed so the per-worker compiled-template cache sees the new version.
        locked.save(update_fields=[*(k for k in changed if k in wanted), "updated_at"])
        audit.record(
            brand=locked.brand,
            user=user,
            action="campaign.updated",
            target=campaign.name,
            details={"fields": changed, **({"name": locked.name} if "name" in changed else {})},
        )
    return locked


def count_eligible(*, brand: Brand, audience_ids: Sequence[int], segment: Any, campaign_id: int | None = None) -> int:
    """How many people unsaved targeting would reach now.

    The same two steps as ``delivery.recipients`` (the one eligibility rule,
    then the segment), for targeting that is not saved on a campaign yet.
    """
    live = list(
        Audience.objects.filter(brand=brand, archived_at__isnull=True, pk__in=list(audience_ids)).values_list(
            "pk", flat=True
        )
    )
    if not live:
        return 0
    eligible = Subscriber.objects.filter(brand=brand).eligible(audience_ids=live, campaign_id=campaign_id)
    return targeting.apply(eligible, segment).count()


def subscriber_context(campaign: Campaign, subscriber: Subscriber) -> dict[str, Any]:
    """The context a delivery to ``subscriber`` renders with: their data and their real links."""
    audiences = list(campaign.audiences.order_by("pk"))
    return rendering.build_context(
        brand=campaign.brand,
        subscriber={"email": subscriber.email, "name": subscriber.name, "language": subscriber.language},
        attributes=subscriber.attributes,
        audiences=sorted(a.name for a in audiences),
        links={"unsubscribe": links.unsubscribe_url(subscriber, audiences), "manage": links.manage_url(subscriber)},
    )


def render_preview(*, campaign: Campaign, subscriber: Subscriber | None, real_links: bool = True) -> rendering.Rendered:
    """The message as ``subscriber`` would get it (the sample person when None); RenderError if it fails.

    ``real_links=False`` keeps the sample's inert links: a person's manage link
    opens their preference centre (export, erase), more than a viewer may do.
    """
    context = rendering.sample_context(campaign)
    if subscriber is not None:
        context = {
            **subscriber_context(campaign, subscriber),
            **({} if real_links else {"links": context["links"]}),
        }
    return _render(campaign, context)


def send_test(
    *, campaign: Campaign, user: User | None, to: Sequence[str], subscriber: Subscriber | None = None
) -> rendering.Rendered:
    """Send the campaign to team addresses, marked as a test, once the transaction commits.

    A test is not a message to a subscriber, so no Delivery is recorded and it
    carries no unsubscribe headers. It shows the chosen subscriber's data (or
    the sample person's) but the sample's inert links: a team member clicking
    around in a test must not unsubscribe a real person.
    """
    if not to:
        raise ComposeError(_("Choose at least one address."), field="to")
    context = rendering.sample_context(campaign)
    if subscriber is not None:
        context = {**subscriber_context(campaign, subscriber), "links": context["links"]}
    rendered = _render(campaign, context)
    reply_to = campaign.reply_to or campaign.brand.reply_to
    with transaction.atomic():
        for address in to:
            message = EmailMultiAlternatives(
                subject=f"[Test] {rendered.subject}",
                body=rendered.text,
                # A draft may still hold a line break in its sender name; a header never does.
                from_email=formataddr((" ".join(campaign.sender_name.split()), campaign.sender_email)),
                to=[address],
                reply_to=[reply_to] if reply_to else None,
                headers={TEST_HEADER: "yes", "Auto-Submitted": "auto-generated"},
            )
            message.attach_alternative(rendered.html, "text/html")
            send_later(message)
        audit.record(
            brand=campaign.brand,
            user=user,
            action="campaign.test_sent",
            target=campaign.name,
            # The subscriber by id only: an erased person's address must not survive in the audit log.
            details={"to": list(to), "subscriber_id": subscriber.pk if subscriber else None},
        )
    return rendered
