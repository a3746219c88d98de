"""Consent operations: every change of consent goes through a function here.

Each operation takes keyword-only arguments, runs in one transaction, and writes
its ``ConsentEvent`` (via ``record_event``, the one definition of what an event
records) in that same transaction.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from email_validator import EmailNotValidError, validate_email

from audiences.models import (
    Audience,
    Brand,
    ConfirmationRequest,
    ConsentEvent,
    ConsentWording,
    SignupForm,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)

log = logging.getLogger(__name__)

MAX_EMAIL_LENGTH = 254


@dataclass(frozen=True)
class Evidence:
    """Who acted, through what, and from where (IP and user agent for consumers)."""

    actor: ConsentEvent.Actor
    source: ConsentEvent.Source
    ip: str | None = None
    user_agent: str = ""
    actor_user: User | None = None


class Outcome(StrEnum):
    """What an operation did. Consumer-facing views never reveal it."""

    CONFIRMATION_QUEUED = "confirmation_queued"
    THROTTLED = "throttled"
    ALREADY_SUBSCRIBED = "already_subscribed"
    BLOCKED = "blocked"
    SUPPRESSED = "suppressed"
    CONFIRMED = "confirmed"
    ALREADY_CONFIRMED = "already_confirmed"
    NOTHING_TO_CONFIRM = "nothing_to_confirm"


class ConsentRefused(Exception):
    """The person's state forbids the change (for example a blocked address)."""


def normalise_email(raw: str) -> str:
    """Validate syntax (no DNS) and return the address in its one stored form.

    Raises ``ValidationError`` with a message fit to show the person.
    """
    raw = raw.strip()
    if not raw or len(raw) > MAX_EMAIL_LENGTH or any(ch in raw for ch in "\r\n\0"):
        raise ValidationError(_("Enter a valid email address."), code="invalid")
    try:
        result = validate_email(raw, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValidationError(_("Enter a valid email address."), code="invalid") from exc
    return result.normalized.lower()


def is_suppressed(*, brand: Brand, email: str) -> bool:
    return Suppression.objects.filter(brand=brand, email_hash=email_hash(email)).exists()


def record_event(
    *,
    subscriber: Subscriber,
    kind: ConsentEvent.Kind,
    evidence: Evidence,
    audiences: Sequence[Audience] = (),
    form: SignupForm | None = None,
    wording: ConsentWording | None = None,
    details: dict[str, Any] | None = None,
) -> ConsentEvent:
    """Write the one append-only record of a consent change. Call inside the change's transaction."""
    return ConsentEvent.objects.create(
        brand_id=subscriber.brand_id,
        subscriber=subscriber,
        kind=kind,
        actor=evidence.actor,
        actor_user=evidence.actor_user,
        source=evidence.source,
        ip=evidence.ip,
        user_agent=evidence.user_agent[:512],
        signup_form=form,
        wording=wording,
        wording_text=wording.text if wording else "",
        audiences=[{"id": a.pk, "name": a.name} for a in audiences],
        details=details or {},
    )


def _throttled(subscriber: Subscriber, now: Any) -> bool:
    """At most one confirmation email per address per interval, and a daily cap."""
    recent = ConfirmationRequest.objects.filter(subscriber=subscriber, created_at__gte=now - timedelta(days=1))
    interval = timedelta(minutes=settings.CONFIRMATION_MIN_INTERVAL_MINUTES)
    if recent.filter(created_at__gte=now - interval).exists():
        return True
    return recent.count() >= settings.CONFIRMATION_DAILY_CAP


def request_subscription(
    *,
    form: SignupForm,
    email: str,
    audiences: Sequence[Audience],
    evidence: Evidence,
    name: str = "",
    language: str = "",
    wording_version: int | None = None,
) -> Outcome:
    """Record a request to join ``audiences`` and queue a confirmation email.

    1. Normalise the address; refuse audiences the form does not offer.
    2. Suppressed or blocked addresses: nothing is written, nothing is sent.
    3. Create or reuse the subscriber; mark each requested audience pending
       unless the person already has it confirmed.
    4. Write ``ConsentEvent(requested)`` with the form's current wording.
    5. Unless the address hit its confirmation limits, create a
       ``ConfirmationRequest`` and send it from a task after commit.
    """
    address = normalise_email(email)
    offered = set(form.audiences.filter(archived_at__isnull=True).values_list("pk", flat=True))
    if not audiences or any(a.pk not in offered for a in audiences):
        raise ValueError("audiences must be a non-empty subset of the form's audiences")
    brand = form.brand
    now = timezone.now()
    with transaction.atomic():
        if is_suppressed(brand=brand, email=address):
            log.info("signup refused: suppressed address brand=%s form=%s", brand.slug, form.pk)
            return Outcome.SUPPRESSED
        subscriber, created = Subscriber.objects.select_for_update().get_or_create(
            brand=brand,
            email=address,
            defaults={
                "email_hash": email_hash(address),
                "name": name,
                "language": language or brand.default_language,
                "source": evidence.source,
            },
        )
        if subscriber.status == Subscriber.Status.BLOCKED:
            log.info("signup refused: blocked subscriber=%s", subscriber.pk)
            return Outcome.BLOCKED
        if not created and name and not subscriber.name:
            subscriber.name = name
            subscriber.save(update_fields=["name"])
        to_confirm = _mark_pending(subscriber, audiences, now, evidence.source)
        if not to_confirm:
            return Outcome.ALREADY_SUBSCRIBED
        wording = _wording_shown(form, wording_version)
        record_event(
            subscriber=subscriber,
            kind=ConsentEvent.Kind.REQUESTED,
            evidence=evidence,
            audiences=to_confirm,
            form=form,
            wording=wording,
            details={"wording_version": wording.version},
        )
        if _throttled(subscriber, now):
            log.warning("confirmation email throttled: subscriber=%s", subscriber.pk)
            return Outcome.THROTTLED
        confirmation = ConfirmationRequest.objects.create(
            subscriber=subscriber, audience_ids=[a.pk for a in to_confirm]
        )
        transaction.on_commit(lambda: _enqueue_confirmation(confirmation.pk))
    return Outcome.CONFIRMATION_QUEUED


def _wording_shown(form: SignupForm, version: int | None) -> ConsentWording:
    """The wording the person saw: the version their form carried, else the current one."""
    if version is not None:
        shown = form.wordings.filter(version=version).first()
        if shown is not None:
            return shown
    return form.current_wording()


def _enqueue_confirmation(confirmation_id: int) -> None:
    from audiences.tasks import send_confirmation

    send_confirmation.delay(confirmation_id)


def _mark_pending(subscriber: Subscriber, audiences: Sequence[Audience], now: Any, source: str) -> list[Audience]:
    """Make each requested audience pending unless already confirmed; return those needing confirmation."""
    existing = {s.audience_id: s for s in subscriber.subscriptions.filter(audience__in=audiences)}
    confirmed = subscriber.status == Subscriber.Status.CONFIRMED
    to_confirm: list[Audience] = []
    for audience in audiences:
        subscription = existing.get(audience.pk)
        if subscription and subscription.status == Subscription.Status.ACTIVE and confirmed:
            continue
        to_confirm.append(audience)
        if subscription is None:
            Subscription.objects.create(subscriber=subscriber, audience=audience, requested_at=now, source=source)
        elif subscription.status != Subscription.Status.PENDING:
            subscription.status = Subscription.Status.PENDING
            subscription.requested_at = now
            subscription.source = source
            subscription.save(update_fields=["status", "requested_at", "source"])
    return to_confirm


def confirm(*, subscriber: Subscriber, audience_ids: Sequence[int], evidence: Evidence) -> Outcome:
    """Confirm the person's own request for ``audience_ids`` (the POST behind the emailed link).

    Idempotent: a second confirmation of the same link changes nothing and writes
    no event. Raises ``ConsentRefused`` for a blocked or suppressed address.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
        if locked.status == Subscriber.Status.BLOCKED or is_suppressed(brand=locked.brand, email=locked.email):
            raise ConsentRefused("this address is blocked")
        pending = list(
            locked.subscriptions.select_related("audience").filter(
                audience_id__in=audience_ids, status=Subscription.Status.PENDING
            )
        )
        if not pending:
            has_active = locked.subscriptions.filter(
                audience_id__in=audience_ids, status=Subscription.Status.ACTIVE
            ).exists()
            if locked.status == Subscriber.Status.CONFIRMED and has_active:
                return Outcome.ALREADY_CONFIRMED
            return Outcome.NOTHING_TO_CONFIRM
        Subscription.objects.filter(pk__in=[s.pk for s in pending]).update(
            status=Subscription.Status.ACTIVE, confirmed_at=now, ended_at=None
        )
        if locked.status != Subscriber.Status.CONFIRMED:
            locked.status = Subscriber.Status.CONFIRMED
            locked.confirmed_at = now
            locked.save(update_fields=["status", "confirmed_at"])
        record_event(
            subscriber=locked,
            kind=ConsentEvent.Kind.CONFIRMED,
            evidence=evidence,
            audiences=[s.audience for s in pending],
        )
    return Outcome.CONFIRMED


def purge_unconfirmed(*, now: Any = None) -> tuple[int, int]:
    """Delete requests never confirmed within ``PENDING_PURGE_DAYS``, personal data included.

    Returns (subscribers deleted, stale pending subscriptions deleted). Works in
    chunks of set-based DELETEs so memory stays flat.
    """
    cutoff = (now or timezone.now()) - timedelta(days=settings.PENDING_PURGE_DAYS)
    subscribers = 0
    stale = Subscriber.objects.filter(status=Subscriber.Status.PENDING, created_at__lt=cutoff)
    while ids := list(stale.values_list("pk", flat=True)[:1000]):
        with transaction.atomic():
            subscribers += Subscriber.objects.filter(pk__in=ids).delete()[1].get("audiences.Subscriber", 0)
    subscriptions, _ = Subscription.objects.filter(status=Subscription.Status.PENDING, requested_at__lt=cutoff).delete()
    return subscribers, subscriptions
