"""The brand's suppression list as the team sees it: search, pages, CSV export, and the team's block.

A suppression keeps only the sha256 of the normalised address (``email_hash``),
so an erased person leaves no address behind. The address is shown where a
subscriber row of the brand still has it (joined by the hash); an exact address
is found by its hash, a part of one through the subscribers' addresses.

Entries are never removed here: only the person's own new double opt-in lifts a
bounce or complaint suppression (``audiences.consent``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from itertools import islice

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q, QuerySet

from audiences import consent
from audiences.consent import Evidence
from audiences.models import Brand, Subscriber, Suppression, email_hash
from audiences.subscriber_queries import Echo, csv_cell

EXPORT_CHUNK_SIZE = 2000
EXPORT_COLUMNS = ["email", "email_hash", "reason", "note", "created_at"]
# A hash prefix (as the list shows for entries without an address) is searched as such.
_HASH_PREFIX = re.compile(r"[0-9a-f]{8,64}")
_FEW_MATCHES = 5000


@dataclass(frozen=True)
class Filters:
    q: str = ""
    reason: str = ""

    @property
    def active(self) -> bool:
        return bool(self.q or self.reason)

    def as_details(self) -> dict[str, str]:
        return asdict(self)


def exact_address(text: str) -> str | None:
    """``text`` as a normalised address when it is one, else None (then it is searched as a part)."""
    if "@" not in text:
        return None
    try:
        return consent.normalise_email(text)
    except ValidationError:
        return None


def filtered(*, brand: Brand, filters: Filters) -> QuerySet[Suppression]:
    """The brand's entries matching ``filters``, unordered.

    A whole address is looked up by its hash (the unique (brand, email_hash)
    index), which also finds erased people and addresses the team blocked
    before anyone signed up. Any other text matches the subscribers' addresses
    (their trigram index; read here, not lazily) and, when it looks like one,
    the start of a hash.
    """
    queryset = Suppression.objects.filter(brand=brand)
    if filters.reason:
        queryset = queryset.filter(reason=filters.reason)
    if filters.q:
        address = exact_address(filters.q)
        if address is not None:
            return queryset.filter(email_hash=email_hash(address))
        text = filters.q.strip().lower()
        matching = Subscriber.objects.filter(brand=brand, email__contains=text)
        # The planner cannot tell how many addresses match. A few: look their hashes up in the
        # list (an index probe each). Many: walk the list newest first and check each entry, which
        # soon fills a page. Each plan is slow in the other's case, so we count first (bounded).
        hashes = list(matching.values_list("email_hash", flat=True)[: _FEW_MATCHES + 1])
        if len(hashes) > _FEW_MATCHES:
            condition = Q(email_hash__in=matching.values("email_hash"))
        else:
            condition = Q(email_hash__in=hashes)
        if _HASH_PREFIX.fullmatch(text):
            condition |= Q(email_hash__startswith=text)
        queryset = queryset.filter(condition)
    return queryset


def addresses(*, brand: Brand, hashes: Iterable[str]) -> dict[str, tuple[int, str]]:
    """hash → (subscriber id, address) for the brand's subscribers who still have one of ``hashes``."""
    rows = Subscriber.objects.filter(brand=brand, email_hash__in=list(hashes)).values_list("email_hash", "pk", "email")
    return {digest: (pk, email) for digest, pk, email in rows}


def with_addresses(rows: list[Suppression], *, brand: Brand) -> list[Suppression]:
    """Set ``email`` and ``subscriber_id`` on each entry (None when no subscriber has it): one query."""
    known = addresses(brand=brand, hashes={row.email_hash for row in rows})
    for row in rows:
        row.subscriber_id, row.email = known.get(row.email_hash, (None, None))  # type: ignore[attr-defined]
    return rows


def export_rows(queryset: QuerySet[Suppression], *, brand: Brand) -> Iterator[list[str]]:
    """One CSV row per entry, newest first, header first: chunks from a server-side cursor, one more query each."""
    rows = (
        queryset.order_by("-created_at", "-pk")
        .values_list("email_hash", "reason", "note", "created_at")
        .iterator(chunk_size=EXPORT_CHUNK_SIZE)
    )
    yield EXPORT_COLUMNS
    while chunk := list(islice(rows, EXPORT_CHUNK_SIZE)):
        known = addresses(brand=brand, hashes={row[0] for row in chunk})
        for digest, reason, note, created_at in chunk:
            email = known[digest][1] if digest in known else ""
            yield [csv_cell(v) for v in (email, digest, reason, note, created_at.isoformat())]


def stream_csv(*, brand: Brand, filters: Filters) -> Iterator[str]:
    """The export of ``filters``, line by line, inside a transaction so PostgreSQL streams the cursor."""
    writer = csv.writer(Echo())
    with transaction.atomic():
        for row in export_rows(filtered(brand=brand, filters=filters), brand=brand):
            yield writer.writerow(row)


# --- The team's block -----------------------------------------------------------------


@dataclass
class Added:
    """What ``add`` did, address by address (normalised addresses)."""

    added: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)
    blocked: list[Subscriber] = field(default_factory=list)


def add(*, brand: Brand, emails: list[str], note: str, evidence: Evidence) -> Added:
    """Put normalised ``emails`` on the brand's suppression list as a team block, all or nothing.

    1. An address already on the list keeps its entry; it is reported as already
       there. A bounce or complaint entry becomes a team block (permanent: a new
       opt-in no longer lifts it), with a consent event when the person exists.
    2. Every other address gets an entry with reason "team" and ``note``.
    3. A subscriber with one of the addresses who is not blocked yet is blocked
       through ``consent.block`` (subscriptions ended, a consent event with the
       team member as actor), after step 2 so the entry keeps the note.
    """
    result = Added()
    hashes = {address: email_hash(address) for address in emails}
    with transaction.atomic():
        listed = set(
            Suppression.objects.filter(brand=brand, email_hash__in=hashes.values()).values_list("email_hash", flat=True)
        )
        for address, digest in hashes.items():
            (result.already if digest in listed else result.added).append(address)
        # A concurrent add of the same address is not an error: the entry exists either way.
        Suppression.objects.bulk_create(
            [
                Suppression(brand=brand, email_hash=hashes[a], reason=Suppression.Reason.TEAM, note=note)
                for a in result.added
            ],
            ignore_conflicts=True,
        )
        people = (
            Subscriber.objects.filter(brand=brand, email__in=emails)
            .exclude(status=Subscriber.Status.BLOCKED)
            .order_by("email")
        )
        for subscriber in people:
            result.blocked.append(
                consent.block(subscriber=subscriber, evidence=evidence, reason=Suppression.Reason.TEAM)
            )
        # A bounce or complaint entry the team blocks on purpose becomes permanent: the person's new
        # opt-in would lift a bounce, not the team's decision (``consent.block`` records that).
        liftable = list(
            Suppression.objects.filter(
                brand=brand, email_hash__in=[hashes[a] for a in result.already], reason__in=consent.LIFTED_BY_OPT_IN
            ).values_list("email_hash", flat=True)
        )
        for subscriber in Subscriber.objects.filter(
            brand=brand, email_hash__in=liftable, status=Subscriber.Status.BLOCKED
        ):
            consent.block(subscriber=subscriber, evidence=evidence, reason=Suppression.Reason.TEAM)
        Suppression.objects.filter(brand=brand, email_hash__in=liftable).update(
            reason=Suppression.Reason.TEAM, note=note
        )
    return result
