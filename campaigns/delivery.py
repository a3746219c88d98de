"""Delivering a campaign: plan, claim, re-check, render, send, record; and reconcile.

The ``Delivery`` rows are the source of truth. A batch claims queued rows with a
lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL), re-checks eligibility for the
whole batch in one query right before sending, renders each message from
templates compiled once per campaign, sends them over one connection, and marks
the results in bulk. The reconciler (Celery beat) puts expired leases back,
restarts sends whose batches stopped (a dead worker, a flushed Redis), starts
scheduled campaigns and finishes campaigns with nothing left to do.
"""

from __future__ import annotations

import logging
import smtplib
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from anymail.exceptions import AnymailError, AnymailRecipientsRefused
from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import get_connection
from django.core.mail.backends.smtp import EmailBackend as SMTPBackend
from django.db import connection, transaction
from django.db.models import Count, F, Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone
from django.utils.translation import gettext as _

from audiences import audit
from audiences.models import Subscriber, Subscription, Suppression
from campaigns import bounces, mime, ratelimit, rendering, targeting
from campaigns import smtp as pipelined
from campaigns.models import Campaign, Delivery

log = logging.getLogger(__name__)

Status = Campaign.Status
DStatus = Delivery.Status


class CampaignError(Exception):
    """The campaign can't make this move; the message says why, for the team."""


@dataclass
class BatchResult:
    claimed: int = 0
    sent: int = 0
    skipped: int = 0
    failed: int = 0
    retry: int = 0
    wait: float = 0.0
    done: bool = False
    reasons: Counter[str] = field(default_factory=Counter)


# --- Team actions -------------------------------------------------------------------


def problems(campaign: Campaign) -> list[str]:
    """Why the campaign can't be scheduled; empty when it can."""
    found: list[str] = []
    if bounces.stopped(campaign.brand_id):
        found.append(
            _(
                "Sending is stopped for this brand because of its complaint rate, until an owner acknowledges "
                "it on the deliverability page."
            )
        )
    if not campaign.brand.postal_address.strip():
        found.append(_("The brand has no postal address: add it in the brand settings."))
    if not campaign.pk or not campaign.audiences.exists():
        found.append(_("Choose at least one audience."))
    for name in ("subject", "from_name", "from_email", "reply_to", "preheader"):
        if any(ch in str(getattr(campaign, name)) for ch in "\r\n"):
            label = getattr(Campaign._meta.get_field(name), "verbose_name", name)
            found.append(_("The %(field)s contains a line break.") % {"field": label})
    found.extend(str(p) for p in rendering.check(campaign))
    return found


def schedule(*, campaign: Campaign, user: User | None, at: datetime | None = None) -> Campaign:
    """Draft → scheduled (at ``at``, or now). Refused while ``problems`` finds any."""
    found = problems(campaign)
    if found:
        raise CampaignError(" ".join(found))
    when = at or timezone.now()
    with transaction.atomic():
        moved = Campaign.objects.filter(pk=campaign.pk, status=Status.DRAFT).update(
            status=Status.SCHEDULED, scheduled_at=when
        )
        if moved != 1:
            raise CampaignError(_("Only a draft can be scheduled."))
        audit.record(
            brand=campaign.brand,
            user=user,
            action="campaign.scheduled",
            target=campaign.name,
            details={"at": when.isoformat()},
        )
        if when <= timezone.now():
            transaction.on_commit(lambda: _enqueue_start(campaign.pk))
    campaign.refresh_from_db()
    return campaign


def unschedule(*, campaign: Campaign, user: User | None) -> Campaign:
    with transaction.atomic():
        moved = Campaign.objects.filter(pk=campaign.pk, status=Status.SCHEDULED).update(status=Status.DRAFT)
        if moved != 1:
            raise CampaignError(_("Only a scheduled campaign that has not started can go back to draft."))
        audit.record(brand=campaign.brand, user=user, action="campaign.unscheduled", target=campaign.name)
    campaign.refresh_from_db()
    return campaign


def pause(*, campaign: Campaign, user: User | None) -> Campaign:
    """Stop between batches: claimed messages finish, nothing new is claimed."""
    return _move(campaign, user, Status.SENDING, Status.PAUSED, "campaign.paused")


def resume(*, campaign: Campaign, user: User | None) -> Campaign:
    if bounces.stopped(campaign.brand_id):
        raise CampaignError(
            _("Sending is stopped for this brand because of its complaint rate; an owner must acknowledge it first.")
        )
    campaign = _move(campaign, user, Status.PAUSED, Status.SENDING, "campaign.resumed")
    transaction.on_commit(lambda: _enqueue_batches(campaign.pk))
    return campaign


def cancel(*, campaign: Campaign, user: User | None) -> Campaign:
    """Stop for good; whatever was not sent is marked skipped (cancelled)."""
    with transaction.atomic():
        moved = Campaign.objects.filter(
            pk=campaign.pk, status__in=[Status.SCHEDULED, Status.SENDING, Status.PAUSED]
        ).update(status=Status.CANCELLED, finished_at=timezone.now())
        if moved != 1:
            raise CampaignError(_("This campaign can't be cancelled now."))
        Delivery.objects.filter(campaign=campaign, status=DStatus.QUEUED).update(
            status=DStatus.SKIPPED, reason="cancelled"
        )
        audit.record(brand=campaign.brand, user=user, action="campaign.cancelled", target=campaign.name)
    campaign.refresh_from_db()
    return campaign


def _move(campaign: Campaign, user: User | None, old: str, new: str, action: str) -> Campaign:
    with transaction.atomic():
        if Campaign.objects.filter(pk=campaign.pk, status=old).update(status=new) != 1:
            raise CampaignError(_("Only a campaign that is “%(status)s” can do that.") % {"status": Status(old).label})
        audit.record(brand=campaign.brand, user=user, action=action, target=campaign.name)
    campaign.refresh_from_db()
    return campaign


# --- Starting: plan the deliveries -----------------------------------------------------


def recipients(campaign: Campaign) -> Any:
    """The eligible subscribers of the campaign right now (audiences, segment, the one eligibility rule)."""
    audience_ids = list(campaign.audiences.values_list("pk", flat=True))
    eligible = Subscriber.objects.filter(brand_id=campaign.brand_id).eligible(
        audience_ids=audience_ids, campaign_id=campaign.pk
    )
    return targeting.apply(eligible, campaign.segment)


def start(*, campaign_id: int) -> bool:
    """Scheduled → sending once due: plan the deliveries, then start the batches. Safe to run twice."""
    now = timezone.now()
    stop = bounces.stopped(Campaign.objects.filter(pk=campaign_id).values_list("brand_id", flat=True).first() or 0)
    if stop is not None:
        log.warning("campaign %s not started: the brand's sending is stopped (alert %s)", campaign_id, stop.pk)
        return False
    moved = Campaign.objects.filter(pk=campaign_id, status=Status.SCHEDULED, scheduled_at__lte=now).update(
        status=Status.SENDING, started_at=now, heartbeat_at=now
    )
    if moved != 1:
        return False
    campaign = Campaign.objects.select_related("brand").get(pk=campaign_id)
    planned = plan(campaign)
    log.info("campaign %s started: %s deliveries planned", campaign_id, planned)
    _enqueue_batches(campaign_id)
    return True


def plan(campaign: Campaign, chunk: int = 50_000) -> int:
    """Insert one queued Delivery per eligible subscriber: set-based, in chunks of subscriber ids.

    ``INSERT … SELECT`` from the eligibility query itself, never a Python loop
    over subscribers; ``ON CONFLICT DO NOTHING`` makes it safe to repeat.
    """
    table = Delivery._meta.db_table
    base = recipients(campaign)
    bounds = Subscriber.objects.filter(brand_id=campaign.brand_id).order_by("pk").values_list("pk", flat=True)
    first, last = bounds.first(), bounds.last()
    total = 0
    if first is None or last is None:
        Campaign.objects.filter(pk=campaign.pk).update(planned_at=timezone.now())
        return 0
    now = timezone.now()
    for low in range(first, last + 1, chunk):
        ids = base.filter(pk__gte=low, pk__lt=low + chunk).values("id")
        sql, params = ids.query.sql_with_params()
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                f"INSERT INTO {table} (campaign_id, subscriber_id, status, reason, attempts, message_id, provider_id, "  # noqa: S608
                f"created_at) SELECT %s, eligible.id, %s, '', 0, '', '', %s FROM ({sql}) AS eligible "
                "ON CONFLICT (campaign_id, subscriber_id) DO NOTHING",
                [campaign.pk, DStatus.QUEUED, now, *params],
            )
            total += max(cursor.rowcount, 0)
    if connection.vendor == "postgresql" and total:
        # Fresh planner statistics for the rows just inserted. Until autovacuum gets round to it the
        # planner guesses, and the per-batch eligibility re-check took ~0.7 s instead of ~5 ms at
        # 1,000,000 recipients (JIT-compiled, a scan of every subscription; bench/send.py).
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {table}")
    Campaign.objects.filter(pk=campaign.pk).update(planned_at=timezone.now())
    return total


# --- Sending: one batch -------------------------------------------------------------------


def claim_batch(campaign_id: int, size: int, *, from_id: int = 0) -> list[int]:
    """Lease up to ``size`` queued deliveries with ids from ``from_id`` on; two workers never get the same row."""
    now = timezone.now()
    lease = now + timedelta(seconds=settings.DELIVERY_LEASE_SECONDS)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"""UPDATE {Delivery._meta.db_table} SET status = %s, lease_until = %s, attempts = attempts + 1
                WHERE id IN (SELECT id FROM {Delivery._meta.db_table}
                             WHERE campaign_id = %s AND status = %s AND id >= %s
                                   AND (retry_at IS NULL OR retry_at <= %s)
                             ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
                RETURNING id""",  # noqa: S608
                [DStatus.SENDING, lease, campaign_id, DStatus.QUEUED, from_id, now, size],
            )
            return sorted(row[0] for row in cursor.fetchall())
    with transaction.atomic():  # SQLite: one writer at a time, so select-then-update is enough
        ids = list(
            Delivery.objects.filter(campaign_id=campaign_id, status=DStatus.QUEUED, pk__gte=from_id)
            .filter(Q(retry_at__isnull=True) | Q(retry_at__lte=now))
            .order_by("pk")
            .values_list("pk", flat=True)[:size]
        )
        Delivery.objects.filter(pk__in=ids, status=DStatus.QUEUED).update(status=DStatus.SENDING, lease_until=lease)
    return ids


def _claim(campaign: Campaign, size: int) -> tuple[list[int], int | None]:
    """Claim the next batch: from the campaign's front first, then anything behind it.

    Batches take deliveries in id order, so everything below the lowest id the latest
    batch claimed (``Campaign.claim_from``) is already handled, except what went back
    to the queue since (a retry, a lease the reconciler released). Starting from the
    front keeps each claim a short index range however many rows were sent before:
    PostgreSQL's planner, assuming queued rows are spread evenly, otherwise walks the
    primary key past every sent row (160 ms a batch at 1,000,000; bench/send.py).
    When the front runs dry, the claim looks behind it. Returns the ids and the new
    front (None when unchanged).
    """
    ids = claim_batch(campaign.pk, size, from_id=campaign.claim_from)
    front = ids[0] if ids else None
    if len(ids) < size and campaign.claim_from:
        ids = sorted({*ids, *claim_batch(campaign.pk, size - len(ids))})
    return ids, front


def send_batch(*, campaign_id: int, size: int | None = None) -> BatchResult:
    """Send one batch of a sending campaign.

    1. Stop if the campaign is not sending (paused, cancelled, done).
    2. Take tokens from the brand's rate limit (shared by all workers).
    3. Claim deliveries with a lease.
    4. Re-check eligibility for the whole batch in one query; skip the rest with a reason.
    5. Render each message (templates compiled once) and send over one connection.
    6. Record the results in bulk and beat the campaign's heartbeat.
    """
    result = BatchResult()
    campaign = Campaign.objects.select_related("brand").filter(pk=campaign_id).first()
    if campaign is None or campaign.status != Status.SENDING:
        result.done = True
        return result
    size = size or settings.DELIVERY_BATCH_SIZE
    if campaign.send_rate:
        granted, wait = ratelimit.take(f"brand:{campaign.brand_id}", size, per_minute=campaign.send_rate)
        if not granted:
            result.wait = wait
            return result
        size = granted
    ids, front = _claim(campaign, size)
    result.claimed = len(ids)
    if not ids:
        result.done = not Delivery.objects.filter(campaign_id=campaign_id, status=DStatus.QUEUED).exists()
        return result
    deliveries = list(Delivery.objects.filter(pk__in=ids).select_related("subscriber").only(*_BATCH_FIELDS))
    subscriber_ids = [d.subscriber_id for d in deliveries]
    still = set(recipients(campaign).filter(pk__in=subscriber_ids).values_list("pk", flat=True))
    to_send = [d for d in deliveries if d.subscriber_id in still]
    skipped = [d for d in deliveries if d.subscriber_id not in still]
    _skip(campaign, skipped, result)
    if to_send:
        _send(campaign, to_send, result)
    moved = {"claim_from": Greatest(F("claim_from"), Value(front))} if front is not None else {}
    Campaign.objects.filter(pk=campaign_id).update(heartbeat_at=timezone.now(), **moved)
    return result


# What a batch reads of each delivery and its subscriber (the rendering context, links, skip reasons).
# Leaving the subscriber's other fields out saves ~40% of building the instances (bench/send.py);
# a field missing here would cost a query per message, which the send benchmark's profile shows.
_BATCH_FIELDS = (
    *(f.attname for f in Delivery._meta.concrete_fields if f.name != "created_at"),
    *(
        f"subscriber__{name}"
        for name in (
            "id",
            "brand_id",
            "email",
            "email_hash",
            "name",
            "language",
            "attributes",
            "status",
            "token_secret",
            "paused_until",
        )
    ),
)


def _skip(campaign: Campaign, skipped: list[Delivery], result: BatchResult) -> None:
    if not skipped:
        return
    reasons = _why_not(campaign, [d.subscriber for d in skipped])
    for d in skipped:
        d.status, d.reason, d.lease_until = DStatus.SKIPPED, reasons.get(d.subscriber_id, "not eligible"), None
        result.reasons[d.reason] += 1
    Delivery.objects.bulk_update(skipped, ["status", "reason", "lease_until"])
    result.skipped += len(skipped)


def _why_not(campaign: Campaign, subscribers: list[Subscriber]) -> dict[int, str]:
    """A reason per subscriber who is no longer eligible (a few queries for the whole batch)."""
    now = timezone.now()
    ids = [s.pk for s in subscribers]
    audience_ids = list(campaign.audiences.values_list("pk", flat=True))
    active = set(
        Subscription.objects.filter(
            subscriber_id__in=ids, audience_id__in=audience_ids, status=Subscription.Status.ACTIVE
        ).values_list("subscriber_id", flat=True)
    )
    suppressed = set(
        Suppression.objects.filter(
            brand_id=campaign.brand_id, email_hash__in=[s.email_hash for s in subscribers]
        ).values_list("email_hash", flat=True)
    )
    reasons = {}
    for s in subscribers:
        if s.status != Subscriber.Status.CONFIRMED:
            reasons[s.pk] = s.status
        elif s.email_hash in suppressed:
            reasons[s.pk] = "suppressed"
        elif s.paused_until and s.paused_until > now:
            reasons[s.pk] = "paused"
        elif s.pk not in active:
            reasons[s.pk] = "left the audience"
        else:
            reasons[s.pk] = "frequency limit or segment"
    return reasons


def _send(campaign: Campaign, deliveries: list[Delivery], result: BatchResult) -> None:
    """Build and send each message over one connection; classify failures as retry or failed.

    With Django's SMTP backend the bytes ``campaigns/mime.py`` built go straight to the
    backend's connection, pipelined when the server offers it (``campaigns/smtp.py``: an
    outcome may arrive with the next message); any other backend (anymail providers,
    the tests' outbox) gets an ``EmailMultiAlternatives`` with the same content.
    """
    messages = mime.CampaignMessages(campaign, _compiled(campaign), list(campaign.audiences.order_by("pk")))
    sent: list[Delivery] = []
    retry: list[Delivery] = []
    failed: list[Delivery] = []
    conn = get_connection()
    raw = isinstance(conn, SMTPBackend)
    pipeline: pipelined.Pipeline[Delivery] | None = None

    def settle(outcomes: list[pipelined.Outcome[Delivery]]) -> None:
        nonlocal pipeline
        for d, error in outcomes:
            if error is None:
                sent.append(d)
            elif _classify(d, error, retry, failed):
                pipeline = None
                _reopen(conn)

    try:
        conn.open()
        for d in deliveries:
            try:
                built = messages.build(d) if raw else None
            except Exception as exc:  # one message we cannot build must not cost the batch its results
                log.exception("campaign %s: delivery %s could not be built", campaign.pk, d.pk)
                failed.append(_with_reason(d, f"could not build the message: {exc!r}"))
                continue
            if built is None:
                if pipeline is not None:  # Django's backend writes on the same connection: end the open DATA first
                    settle(pipeline.flush())
                settle([_send_one(conn, messages, d)])
                continue
            d.message_id = built.message_id
            smtp = conn.connection if isinstance(conn, SMTPBackend) else None
            if smtp is None:
                settle([(d, smtplib.SMTPServerDisconnected("not connected"))])
                continue
            try:
                pipeline = (
                    pipeline if pipeline is not None and pipeline.connection is smtp else pipelined.Pipeline(smtp)
                )
            except (smtplib.SMTPException, OSError) as exc:  # EHLO failed
                settle([(d, exc)])
                continue
            settle(pipeline.submit(d, built.envelope_from, built.recipient, built.data))
        if pipeline is not None:
            settle(pipeline.flush())
    finally:
        try:
            conn.close()
        except Exception:  # closing a broken connection must not lose the results
            log.warning("closing the SMTP connection failed", exc_info=True)
    _record(campaign, sent, retry, failed, result)


def _send_one(conn: Any, messages: mime.CampaignMessages, d: Delivery) -> pipelined.Outcome[Delivery]:
    """Through Django's email backend: an anymail provider (its message id is kept), or an SMTPUTF8 address."""
    try:
        message, d.message_id = messages.django_message(d, smtp=isinstance(conn, SMTPBackend))
        if conn.send_messages([message]) != 1:
            raise smtplib.SMTPServerDisconnected("the backend sent nothing")
    except (smtplib.SMTPException, OSError, AnymailError) as exc:
        return d, exc
    status = getattr(message, "anymail_status", None)
    d.provider_id = (getattr(status, "message_id", None) or "")[:255]
    return d, None


def _classify(d: Delivery, error: Exception, retry: list[Delivery], failed: list[Delivery]) -> bool:
    """Queue the delivery for a retry (a temporary failure) or mark it failed.

    Returns True when the connection must be renewed (dropped, or the server said 421).
    """
    if isinstance(error, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in error.recipients.values()]
        (retry if all(400 <= c < 500 for c in codes) else failed).append(_with_reason(d, repr(error.recipients)))
        return 421 in codes  # smtplib (and the pipeline) closed the connection
    if isinstance(error, smtplib.SMTPResponseException):
        text = error.smtp_error
        reply = f"{error.smtp_code} {text.decode(errors='replace') if isinstance(text, bytes) else text}"
        # A refused sender is the server's matter (a relay's configuration, the VERP address), not the
        # recipient's: try again later, within the attempt limit, rather than failing everyone at once.
        temporary = 400 <= error.smtp_code < 500 or isinstance(error, smtplib.SMTPSenderRefused)
        (retry if temporary else failed).append(_with_reason(d, reply))
        return error.smtp_code == 421
    if isinstance(error, AnymailRecipientsRefused):
        failed.append(_with_reason(d, str(error)))
        return False
    # Disconnected, a socket error, or the provider's API failing: try again later, within the attempt limit.
    retry.append(_with_reason(d, repr(error)))
    return isinstance(error, smtplib.SMTPServerDisconnected | OSError)


def _reopen(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        log.debug("close before reconnect failed", exc_info=True)
    try:
        conn.open()
    except OSError:
        log.warning("reconnecting to the mail server failed", exc_info=True)


def _with_reason(d: Delivery, reason: str) -> Delivery:
    d.reason = reason[:255]
    return d


def _record(
    campaign: Campaign, sent: list[Delivery], retry: list[Delivery], failed: list[Delivery], result: BatchResult
) -> None:
    now = timezone.now()
    for d in sent:
        d.status, d.sent_at, d.lease_until, d.reason = DStatus.SENT, now, None, ""
    for d in failed:
        d.status, d.lease_until = DStatus.FAILED, None
    for d in retry:
        # Back to the queue with backoff, until the attempts run out.
        if d.attempts >= settings.DELIVERY_MAX_ATTEMPTS:
            d.status, d.lease_until = DStatus.FAILED, None
            failed.append(d)
        else:
            delay = settings.EMAIL_RETRY_BACKOFF_SECONDS * 2 ** max(d.attempts - 1, 0)
            d.status, d.lease_until, d.retry_at = DStatus.QUEUED, None, now + timedelta(seconds=delay)
    retry = [d for d in retry if d.status == DStatus.QUEUED]
    with transaction.atomic():
        if sent:
            _mark_sent(sent, now)
            bounces.count(
                campaign.brand_id, timezone.localtime(now, bounces.zone(campaign.brand)).date(), sent=len(sent)
            )
        if failed or retry:
            Delivery.objects.bulk_update([*failed, *retry], ["status", "lease_until", "reason", "retry_at"])
    result.sent += len(sent)
    result.failed += len(failed)
    result.retry += len(retry)


def _mark_sent(sent: list[Delivery], now: datetime) -> None:
    """Mark a batch sent in one statement; only the Message-ID differs per row.

    ``bulk_update`` builds a ``CASE WHEN id = …`` expression per row and field in Python, which cost
    about 1 ms per message in the send benchmark (bench/send.py), more than rendering the message.
    """
    if connection.vendor != "postgresql":
        Delivery.objects.bulk_update(sent, ["status", "sent_at", "lease_until", "reason", "message_id", "provider_id"])
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"""UPDATE {Delivery._meta.db_table} AS d
            SET status = %s, sent_at = %s, lease_until = NULL, reason = '', message_id = v.message_id,
                provider_id = v.provider_id
            FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS v(id, message_id, provider_id)
            WHERE d.id = v.id AND d.status IN (%s, %s)""",  # noqa: S608
            [
                DStatus.SENT,
                now,
                [d.pk for d in sent],
                [d.message_id for d in sent],
                [d.provider_id for d in sent],
                # A provider's report (bounced, complained) processed before this batch recorded its results
                # wins; a delivery whose lease ran out meanwhile (queued again) was sent all the same.
                DStatus.SENDING,
                DStatus.QUEUED,
            ],
        )


_compiled_cache: dict[tuple[int, datetime], rendering.CompiledCampaign] = {}


def _compiled(campaign: Campaign) -> rendering.CompiledCampaign:
    """Templates compiled once per campaign version, per worker process."""
    key = (campaign.pk, campaign.updated_at)
    if key not in _compiled_cache:
        _compiled_cache.clear()
        _compiled_cache[key] = rendering.compile_campaign(campaign)
    return _compiled_cache[key]


# --- Progress and the reconciler ---------------------------------------------------------------


def progress(campaign: Campaign) -> dict[str, Any]:
    counts = dict(
        Delivery.objects.filter(campaign=campaign)
        .values_list("status")
        .annotate(n=Count("id"))
        .values_list("status", "n")
    )
    total = sum(counts.values())
    remaining = counts.get(DStatus.QUEUED, 0) + counts.get(DStatus.SENDING, 0)
    window = timezone.now() - timedelta(minutes=1)
    rate = Delivery.objects.filter(campaign=campaign, sent_at__gte=window).count()
    eta = int(remaining / rate * 60) if rate else None
    done = total - remaining
    return {
        "status": campaign.status,
        "total": total,
        "sent": counts.get(DStatus.SENT, 0),
        "skipped": counts.get(DStatus.SKIPPED, 0),
        "failed": counts.get(DStatus.FAILED, 0),
        "bounced": counts.get(DStatus.BOUNCED, 0),
        "complained": counts.get(DStatus.COMPLAINED, 0),
        "remaining": remaining,
        "percent": int(done * 100 / total) if total else (100 if campaign.status == Status.SENT else 0),
        "rate_per_minute": rate,
        "eta_seconds": eta,
    }


def reconcile() -> dict[str, int]:
    """The periodic safety net (Celery beat); everything it does is idempotent.

    1. Deliveries whose lease expired (their worker died) go back to queued.
    2. Scheduled campaigns that are due start.
    3. Sending campaigns that are planned and have nothing queued or in flight
       are marked sent.
    4. Sending campaigns whose batches stopped (no heartbeat for two leases:
       a killed worker, a flushed broker) get their batches enqueued again,
       after planning again if the start died while planning.
    """
    now = timezone.now()
    stats = {"released": 0, "started": 0, "finished": 0, "restarted": 0}
    stats["released"] = Delivery.objects.filter(status=DStatus.SENDING, lease_until__lt=now).update(
        status=DStatus.QUEUED, lease_until=None
    )
    for campaign_id in Campaign.objects.filter(status=Status.SCHEDULED, scheduled_at__lte=now).values_list(
        "pk", flat=True
    ):
        stats["started"] += int(start(campaign_id=campaign_id))
    stale = now - timedelta(seconds=2 * settings.DELIVERY_LEASE_SECONDS)
    for campaign in Campaign.objects.filter(status=Status.SENDING):
        if finish_if_done(campaign_id=campaign.pk):
            stats["finished"] += 1
        elif campaign.heartbeat_at is None or campaign.heartbeat_at < stale:
            Campaign.objects.filter(pk=campaign.pk).update(heartbeat_at=now)
            if campaign.planned_at is None:  # the start died while planning; planning is repeatable
                plan(campaign)
            _enqueue_batches(campaign.pk)
            stats["restarted"] += 1
    return stats


def finish_if_done(*, campaign_id: int) -> bool:
    """Sending → sent once planned and nothing is queued or in flight (never before planning ends)."""
    left = Delivery.objects.filter(campaign_id=campaign_id, status__in=[DStatus.QUEUED, DStatus.SENDING]).exists()
    if left:
        return False
    return (
        Campaign.objects.filter(pk=campaign_id, status=Status.SENDING, planned_at__isnull=False).update(
            status=Status.SENT, finished_at=timezone.now()
        )
        == 1
    )


def _enqueue_start(campaign_id: int) -> None:
    from campaigns.tasks import start_campaign

    start_campaign.delay(campaign_id)


def _enqueue_batches(campaign_id: int) -> None:
    """Start ``DELIVERY_PARALLEL`` chains of batch tasks; each re-enqueues itself while work remains."""
    from campaigns.tasks import send_campaign_batch

    for _slot in range(settings.DELIVERY_PARALLEL):
        send_campaign_batch.delay(campaign_id)
