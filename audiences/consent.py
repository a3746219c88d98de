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
    ConsentEvent,
    ConsentWording,
    ConsumerEmail,
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


def may_send_confirmation(subscriber: Subscriber) -> bool:
    """Whether a confirmation request may go to this person now (checked again at send time).

    Blocked or suppressed addresses get nothing, except when the only bar is a
    bounce or complaint suppression: the person has just asked again, and only
    their new double opt-in can lift it (``confirm``).
    """
    suppression = Suppression.objects.filter(brand_id=subscriber.brand_id, email_hash=subscriber.email_hash).first()
    if suppression is not None:
        return suppression.reason in LIFTED_BY_OPT_IN
    return subscriber.status != Subscriber.Status.BLOCKED


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


def _throttled(subscriber: Subscriber, kind: ConsumerEmail.Kind, now: Any) -> bool:
    """At most one email of this kind per address per interval, and a daily cap."""
    recent = ConsumerEmail.objects.filter(subscriber=subscriber, kind=kind, created_at__gte=now - timedelta(days=1))
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
       ``ConsumerEmail`` and send it from a task after commit.
    """
    address = normalise_email(email)
    offered = set(form.audiences.filter(archived_at__isnull=True).values_list("pk", flat=True))
    if not audiences or any(a.pk not in offered for a in audiences):
        raise ValueError("audiences must be a non-empty subset of the form's audiences")
    brand = form.brand
    now = timezone.now()
    with transaction.atomic():
        suppression = Suppression.objects.filter(brand=brand, email_hash=email_hash(address)).first()
        # Only the person's own request (and then their confirmation) may lift a bounce or complaint suppression.
        liftable = (
            suppression is not None
            and suppression.reason in LIFTED_BY_OPT_IN
            and evidence.actor == ConsentEvent.Actor.CONSUMER
        )
        if suppression is not None and not liftable:
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
        if subscriber.status == Subscriber.Status.BLOCKED and not liftable:
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
        if _throttled(subscriber, ConsumerEmail.Kind.CONFIRM, now):
            log.warning("confirmation email throttled: subscriber=%s", subscriber.pk)
            return Outcome.THROTTLED
        _queue_email(subscriber, ConsumerEmail.Kind.CONFIRM, [a.pk for a in to_confirm])
    return Outcome.CONFIRMATION_QUEUED


def _wording_shown(form: SignupForm, version: int | None) -> ConsentWording:
    """The wording the person saw: the version their form carried, else the current one."""
    if version is not None:
        shown = form.wordings.filter(version=version).first()
        if shown is not None:
            return shown
    return form.current_wording()


def _queue_email(subscriber: Subscriber, kind: ConsumerEmail.Kind, audience_ids: list[int]) -> None:
    """Create the email's row now; send it from a task once the transaction commits."""
    from audiences.tasks import send_consumer_email

    row = ConsumerEmail.objects.create(subscriber=subscriber, kind=kind, audience_ids=audience_ids)
    transaction.on_commit(lambda: send_consumer_email.delay(row.pk))


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
    no event. Raises ``ConsentRefused`` for a blocked or suppressed address,
    except that the person's own confirmation lifts a bounce or complaint
    suppression (for the future; the consent log records ``unblocked``).
    """
    now = timezone.now()
    with transaction.atomic():
        locked = Subscriber.objects.select_for_update().get(pk=subscriber.pk)
        suppression = (
            Suppression.objects.select_for_update()
            .filter(brand_id=locked.brand_id, email_hash=locked.email_hash)
            .first()
        )
        if suppression is not None and (
            suppression.reason not in LIFTED_BY_OPT_IN or evidence.actor != ConsentEvent.Actor.CONSUMER
        ):
            raise ConsentRefused("this address is blocked")
        if locked.status == Subscriber.Status.BLOCKED and suppression is None:
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
        if suppression is not None:
            record_event(
                subscriber=locked,
                kind=ConsentEvent.Kind.UNBLOCKED,
                evidence=evidence,
                details={"reason": suppression.reason, "suppressed_at": suppression.created_at.isoformat()},
            )
            suppression.delete()
            locked.blocked_at = None
        Subscription.objects.filter(pk__in=[s.pk for s in pending]).update(
            status=Subscription.Status.ACTIVE, confirmed_at=now, ended_at=None
        )
        if locked.status != Subscriber.Status.CONFIRMED:
            locked.status = Subscriber.Status.CONFIRMED
            locked.confirmed_at = now
            locked.save(update_fields=["status", "confirmed_at", "blocked_at"])
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


# --- Withdrawal and preferences ---------------------------------------------------
#
# Every function below is reached from a link the person holds (their authority)
# or from the team, locks the subscriber, changes state with conditional bulk
# updates, and writes its consent event in the same transaction. A call that
# changes nothing writes nothing, so repeating it is harmless.


def _lock(subscriber: Subscriber) -> Subscriber:
    return Subscriber.objects.select_for_update().select_related("brand").get(pk=subscriber.pk)


def _settle_status(subscriber: Subscriber, now: Any) -> None:
    """Keep the subscriber's status in step with their subscriptions."""
    has_active = subscriber.subscriptions.filter(status=Subscription.Status.ACTIVE).exists()
    if subscriber.status == Subscriber.Status.CONFIRMED and not has_active:
        subscriber.status = Subscriber.Status.UNSUBSCRIBED
        subscriber.unsubscribed_at = now
        subscriber.save(update_fields=["status", "unsubscribed_at"])
    elif subscriber.status == Subscriber.Status.UNSUBSCRIBED and has_active:
        subscriber.status = Subscriber.Status.CONFIRMED
        subscriber.save(update_fields=["status"])


def unsubscribe(*, subscriber: Subscriber, audience_ids: Sequence[int] | None, evidence: Evidence) -> list[Audience]:
    """Leave ``audience_ids`` (``None``: everything), active or still pending.

    Returns the audiences actually left; an empty list means nothing changed
    and no event was written. Takes effect at once: the eligibility queryset
    excludes the person from the next batch.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = _lock(subscriber)
        current = locked.subscriptions.select_related("audience").exclude(status=Subscription.Status.INACTIVE)
        if audience_ids is not None:
            current = current.filter(audience_id__in=audience_ids)
        leaving = list(current)
        if not leaving:
            return []
        Subscription.objects.filter(pk__in=[s.pk for s in leaving]).update(
            status=Subscription.Status.INACTIVE, ended_at=now
        )
        _settle_status(locked, now)
        audiences = [s.audience for s in leaving]
        record_event(
            subscriber=locked,
            kind=ConsentEvent.Kind.UNSUBSCRIBED,
            evidence=evidence,
            audiences=audiences,
            details={"scope": "all" if audience_ids is None else "audiences"},
        )
    return audiences


def resubscribe(*, subscriber: Subscriber, audience_ids: Sequence[int], evidence: Evidence) -> list[Audience]:
    """Turn audiences back on from the person's own signed link.

    Only a person who confirmed their address before (confirmed now, or
    unsubscribed since) can; a pending, blocked or suppressed one cannot, so a
    stale link never re-enables them. Returns the audiences turned on.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = _lock(subscriber)
        if locked.status not in {Subscriber.Status.CONFIRMED, Subscriber.Status.UNSUBSCRIBED} or is_suppressed(
            brand=locked.brand, email=locked.email
        ):
            raise ConsentRefused("only a confirmed address can turn audiences back on")
        joinable = Audience.objects.filter(brand_id=locked.brand_id, pk__in=audience_ids, archived_at__isnull=True)
        already = set(
            locked.subscriptions.filter(status=Subscription.Status.ACTIVE).values_list("audience_id", flat=True)
        )
        joining = [a for a in joinable.order_by("name") if a.pk not in already]
        if not joining:
            return []
        for audience in joining:
            Subscription.objects.update_or_create(
                subscriber=locked,
                audience=audience,
                defaults={
                    "status": Subscription.Status.ACTIVE,
                    "confirmed_at": now,
                    "ended_at": None,
                    "source": evidence.source,
                },
                create_defaults={
                    "status": Subscription.Status.ACTIVE,
                    "confirmed_at": now,
                    "requested_at": now,
                    "source": evidence.source,
                },
            )
        _settle_status(locked, now)
        record_event(subscriber=locked, kind=ConsentEvent.Kind.RESUBSCRIBED, evidence=evidence, audiences=joining)
    return joining


def update_profile(
    *, subscriber: Subscriber, evidence: Evidence, name: str, language: str, frequency: str
) -> dict[str, Any]:
    """Change name, language and how often the person hears from the brand. Returns what changed."""
    with transaction.atomic():
        locked = _lock(subscriber)
        wanted = {"name": name, "language": language, "frequency": frequency}
        changed = {field: value for field, value in wanted.items() if getattr(locked, field) != value}
        if not changed:
            return {}
        for field, value in changed.items():
            setattr(locked, field, value)
        locked.full_clean(exclude=["brand", "email", "email_hash", "token_secret"], validate_unique=False)
        locked.save(update_fields=list(changed))
        record_event(subscriber=locked, kind=ConsentEvent.Kind.PREFERENCES, evidence=evidence, details=changed)
    return changed


def pause(*, subscriber: Subscriber, days: int | None, evidence: Evidence) -> Subscriber:
    """Pause all mail for ``days`` (30 or 90 from the preference centre); ``None`` resumes."""
    with transaction.atomic():
        locked = _lock(subscriber)
        until = timezone.now() + timedelta(days=days) if days else None
        if until is None and locked.paused_until is None:
            return locked
        locked.paused_until = until
        locked.save(update_fields=["paused_until"])
        record_event(
            subscriber=locked,
            kind=ConsentEvent.Kind.PAUSED,
            evidence=evidence,
            details={"paused_until": until.isoformat() if until else None, "days": days},
        )
    return locked


# Suppressions that the person's own new double opt-in lifts (see ``confirm``); the others are for good.
LIFTED_BY_OPT_IN = frozenset(
    {Suppression.Reason.HARD_BOUNCE, Suppression.Reason.SOFT_BOUNCE, Suppression.Reason.COMPLAINT}
)


def block(
    *,
    subscriber: Subscriber,
    evidence: Evidence,
    reason: str = Suppression.Reason.BLOCKED,
    details: dict[str, Any] | None = None,
) -> Subscriber:
    """Never contact this address again for this brand ("never contact me", a team block, a bounce, a complaint).

    Ends every subscription, blocks the subscriber and adds the address to the
    brand's suppression list, so no signup, import or API call can add it back.
    Blocking someone already blocked by a bounce or complaint for a reason a new
    opt-in does not lift (the person's or the team's) makes the block permanent.
    """
    now = timezone.now()
    with transaction.atomic():
        locked = _lock(subscriber)
        if locked.status == Subscriber.Status.BLOCKED:
            if reason not in LIFTED_BY_OPT_IN:
                hardened = Suppression.objects.filter(
                    brand_id=locked.brand_id, email_hash=locked.email_hash, reason__in=LIFTED_BY_OPT_IN
                ).update(reason=reason)
                if hardened:
                    record_event(
                        subscriber=locked,
                        kind=ConsentEvent.Kind.BLOCKED,
                        evidence=evidence,
                        details={"reason": reason, **(details or {})},
                    )
            return locked
        audiences = [
            s.audience
            for s in locked.subscriptions.select_related("audience").exclude(status=Subscription.Status.INACTIVE)
        ]
        locked.subscriptions.exclude(status=Subscription.Status.INACTIVE).update(
            status=Subscription.Status.INACTIVE, ended_at=now
        )
        locked.status = Subscriber.Status.BLOCKED
        locked.blocked_at = now
        locked.save(update_fields=["status", "blocked_at"])
        Suppression.objects.get_or_create(
            brand_id=locked.brand_id, email_hash=locked.email_hash, defaults={"reason": reason}
        )
        record_event(
            subscriber=locked,
            kind=ConsentEvent.Kind.BLOCKED,
            evidence=evidence,
            audiences=audiences,
            details={"reason": reason, **(details or {})},
        )
    return locked


def erase(*, subscriber: Subscriber, evidence: Evidence) -> Suppression:
    """Delete the person (GDPR Art. 17): profile, attributes, subscriptions, history, emails.

    What stays is one suppression entry keyed by the sha256 of the normalised
    address (no address, no name), so no import, API call or signup can add the
    person again. An existing bounce or complaint suppression becomes an erasure one.
    The deletion itself leaves no event: the events are personal data too.
    """
    with transaction.atomic():
        locked = _lock(subscriber)
        suppression, _ = Suppression.objects.get_or_create(
            brand_id=locked.brand_id, email_hash=locked.email_hash, defaults={"reason": Suppression.Reason.ERASED}
        )
        if suppression.reason in LIFTED_BY_OPT_IN:
            # Erasure is for good: a later signup must not lift what began as a bounce.
            suppression.reason = Suppression.Reason.ERASED
            suppression.save(update_fields=["reason"])
        subscriber_id = locked.pk
        locked.delete()
    log.info("erased subscriber %s (actor %s, source %s)", subscriber_id, evidence.actor, evidence.source)
    return suppression


def request_manage_link(*, brand: Brand, email: str) -> bool:
    """Email a fresh preference-centre link to a known, reachable address.

    Returns whether an email was queued; callers answer the same either way.
    Limited per address like confirmation emails.
    """
    try:
        address = normalise_email(email)
    except ValidationError:
        return False
    now = timezone.now()
    with transaction.atomic():
        subscriber = (
            Subscriber.objects.select_for_update()
            .filter(brand=brand, email=address)
            .exclude(status=Subscriber.Status.BLOCKED)
            .first()
        )
        if subscriber is None or is_suppressed(brand=brand, email=address):
            return False
        if _throttled(subscriber, ConsumerEmail.Kind.MANAGE, now):
            log.warning("manage link throttled: subscriber=%s", subscriber.pk)
            return False
        _queue_email(subscriber, ConsumerEmail.Kind.MANAGE, [])
    return True
