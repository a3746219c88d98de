"""Finding subscribers in the dashboard: search, filters, keyset pages, and the CSV export.

Read-only. Every query starts from one brand's subscribers and is ordered newest
first by ``(created_at, id)``, the key of the ``subscriber_brand_created`` index,
so a page is one short index range scan however deep it is: pages are addressed
by a cursor (the key of a row on the edge of the page), never by an OFFSET, and
nothing counts the whole set on each page load.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Any, Generic, NamedTuple, TypeVar

from django.db import connection, transaction
from django.db.models import Exists, Model, OuterRef, Q, QuerySet
from django.utils import timezone

from audiences.models import Audience, Brand, ConsentEvent, Subscriber, Subscription

PAGE_SIZE = 50
# Up to this many matching rows are counted exactly; beyond it the list says "about N".
EXACT_COUNT_LIMIT = 10_000
EXPORT_CHUNK_SIZE = 2000
EXPORT_COLUMNS = [
    "email",
    "name",
    "language",
    "status",
    "source",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
    "active_audiences",
    "confirmed_event_at",
    "confirmed_ip",
    "confirmed_user_agent",
    "confirmed_source",
    "request_form",
    "request_wording_version",
    "request_wording_text",
]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Any model with ``created_at`` and an ``(brand, created_at, id)`` index pages the same way (subscribers, suppressions).
R = TypeVar("R", bound=Model)
_ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class Filters:
    """What the team asked for: every field optional, all of them combined with AND."""

    q: str = ""
    status: str = ""
    audience_id: int | None = None
    created_from: date | None = None
    created_to: date | None = None
    source: str = ""

    @property
    def active(self) -> bool:
        return any(value not in ("", None) for value in asdict(self).values())

    def as_details(self) -> dict[str, Any]:
        """The filters as JSON-safe values, for the audit log."""
        return {key: value.isoformat() if isinstance(value, date) else value for key, value in asdict(self).items()}


@dataclass(frozen=True)
class Cursor:
    """The sort key of one row; a page starts just past it. Encoded as ``<µs since epoch>_<id>``."""

    created_at: datetime
    pk: int

    @classmethod
    def of(cls, row: Any) -> Cursor:
        """The cursor of a row with ``created_at`` and ``pk``."""
        return cls(row.created_at, row.pk)

    def encode(self) -> str:
        # Integer microseconds: exact, unlike a float timestamp, and no timezone to lose.
        return f"{(self.created_at - _EPOCH) // _ONE_MICROSECOND}_{self.pk}"

    @classmethod
    def decode(cls, token: str) -> Cursor:
        """Raise ``ValueError`` for anything that is not a cursor we could have written."""
        micros, _, pk = token.partition("_")
        if not micros.lstrip("-").isdigit() or not pk.isdigit():
            raise ValueError(f"malformed cursor {token!r}")
        try:
            at = _EPOCH + timedelta(microseconds=int(micros))
        except OverflowError as exc:
            raise ValueError(f"cursor out of range {token!r}") from exc
        return cls(at, int(pk))


@dataclass(frozen=True)
class Page(Generic[R]):
    rows: list[R]
    # Cursors for the "Newer" (?before=) and "Older" (?after=) links; None when there is nothing that way.
    newer: Cursor | None
    older: Cursor | None


def _day_start(day: date) -> datetime:
    return timezone.make_aware(datetime.combine(day, time.min))


def filtered(*, brand: Brand, filters: Filters) -> QuerySet[Subscriber]:
    """The brand's subscribers matching ``filters``, unordered.

    The text search matches a part of the address or of the name, ignoring
    case. Addresses are stored lower-cased (``consent.normalise_email``), so the
    email half is a plain LIKE; both halves are served by trigram indexes on
    PostgreSQL. Signup dates are whole days in the site's time zone, both ends
    included, compared as a range on ``created_at`` so the index can serve it.
    """
    queryset = Subscriber.objects.filter(brand=brand)
    if filters.q:
        queryset = queryset.filter(Q(email__contains=filters.q.lower()) | Q(name__icontains=filters.q))
    if filters.status:
        queryset = queryset.filter(status=filters.status)
    if filters.audience_id is not None:
        active = Subscription.objects.filter(
            subscriber=OuterRef("pk"), audience_id=filters.audience_id, status=Subscription.Status.ACTIVE
        )
        queryset = queryset.filter(Exists(active))
    if filters.created_from:
        queryset = queryset.filter(created_at__gte=_day_start(filters.created_from))
    if filters.created_to:
        queryset = queryset.filter(created_at__lt=_day_start(filters.created_to + timedelta(days=1)))
    if filters.source:
        queryset = queryset.filter(source=filters.source)
    return queryset


def _older_than(cursor: Cursor) -> Q:
    # The redundant ``created_at <= c`` gives the planner an index bound; the OR alone would not.
    return Q(created_at__lte=cursor.created_at) & (
        Q(created_at__lt=cursor.created_at) | Q(created_at=cursor.created_at, pk__lt=cursor.pk)
    )


def _newer_than(cursor: Cursor) -> Q:
    return Q(created_at__gte=cursor.created_at) & (
        Q(created_at__gt=cursor.created_at) | Q(created_at=cursor.created_at, pk__gt=cursor.pk)
    )


def page(
    queryset: QuerySet[R],
    *,
    after: Cursor | None = None,
    before: Cursor | None = None,
    size: int | None = None,
) -> Page[R]:
    """One page of ``queryset``, newest first.

    ``after`` gives the page of rows just older than that cursor, ``before``
    the page just newer, neither the newest page. One row more than the page
    is read to know whether another page follows in that direction.
    """
    size = size or PAGE_SIZE
    if before is not None:
        rows = list(queryset.filter(_newer_than(before)).order_by("created_at", "pk")[: size + 1])
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        if not more_newer and len(rows) < size:
            # Back at the top with a short page (rows were deleted meanwhile): show the full first page.
            return page(queryset, size=size)
        return Page(
            rows=rows,
            newer=Cursor.of(rows[0]) if more_newer else None,
            older=Cursor.of(rows[-1]) if rows else None,
        )
    newest_first = queryset.order_by("-created_at", "-pk")
    if after is not None:
        newest_first = newest_first.filter(_older_than(after))
    rows = list(newest_first[: size + 1])
    more_older = len(rows) > size
    rows = rows[:size]
    return Page(
        rows=rows,
        newer=Cursor.of(rows[0]) if after is not None and rows else None,
        older=Cursor.of(rows[-1]) if more_older else None,
    )


@dataclass(frozen=True)
class Total:
    n: int
    exact: bool


def total(*, brand: Brand) -> Total | None:
    """How many subscribers the brand has, at a bounded cost.

    Counts exactly up to ``EXACT_COUNT_LIMIT`` (a LIMITed count stops early);
    above that, PostgreSQL's planner estimate for the brand (from the table
    statistics, no scan) is good enough for "about 1,000,000". Elsewhere, None.
    """
    mine = Subscriber.objects.filter(brand=brand)
    counted = mine.order_by()[: EXACT_COUNT_LIMIT + 1].count()
    if counted <= EXACT_COUNT_LIMIT:
        return Total(counted, exact=True)
    if connection.vendor != "postgresql":
        return None
    plan = json.loads(mine.order_by().values("pk").explain(format="json"))
    estimate = max(int(plan[0]["Plan"]["Plan Rows"]), counted)
    # Two significant digits: an estimate shown to the last digit would look exact.
    return Total(round(estimate, 2 - len(str(estimate))), exact=False)


# --- Export ------------------------------------------------------------------------


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value else ""


def csv_cell(value: Any) -> str:
    """A CSV cell that a spreadsheet shows as text, never runs as a formula.

    Names and user agents come from the public; a leading =, +, - or @ would
    make Excel or LibreOffice evaluate them (OWASP "CSV injection").
    """
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


class _Event(NamedTuple):
    """The evidence columns of one requested or confirmed consent event."""

    subscriber_id: int
    kind: str
    created_at: datetime
    pk: int
    ip: str | None
    user_agent: str
    source: str
    form_title: str | None
    wording_version: int | None
    wording_text: str


def _evidence(events: list[_Event]) -> tuple[_Event | None, _Event | None]:
    """The latest confirmation and the request it confirmed (the latest one before it).

    ``events`` are the person's requested and confirmed events, oldest first.
    Without a confirmation, the latest request.
    """
    confirmed = next((e for e in reversed(events) if e.kind == ConsentEvent.Kind.CONFIRMED), None)
    requests = [e for e in events if e.kind == ConsentEvent.Kind.REQUESTED]
    if confirmed is not None:
        requests = [e for e in requests if (e.created_at, e.pk) <= (confirmed.created_at, confirmed.pk)]
    return confirmed, requests[-1] if requests else None


def _chunk_details(ids: list[int]) -> tuple[dict[int, list[int]], dict[int, list[_Event]]]:
    """Active audience ids and evidence events of one chunk of subscribers: two queries."""
    audiences: dict[int, list[int]] = defaultdict(list)
    active = Subscription.objects.filter(subscriber_id__in=ids, status=Subscription.Status.ACTIVE)
    for subscriber_id, audience_id in active.values_list("subscriber_id", "audience_id"):
        audiences[subscriber_id].append(audience_id)
    events: dict[int, list[_Event]] = defaultdict(list)
    evidence = ConsentEvent.objects.filter(
        subscriber_id__in=ids, kind__in=[ConsentEvent.Kind.REQUESTED, ConsentEvent.Kind.CONFIRMED]
    ).order_by("created_at", "pk")
    for row in evidence.values_list(*_EVENT_FIELDS):
        event = _Event(*row)
        events[event.subscriber_id].append(event)
    return audiences, events


_SUBSCRIBER_FIELDS = [
    "pk",
    "email",
    "name",
    "language",
    "status",
    "source",
    "created_at",
    "confirmed_at",
    "unsubscribed_at",
]
_EVENT_FIELDS = [
    "subscriber_id",
    "kind",
    "created_at",
    "pk",
    "ip",
    "user_agent",
    "source",
    "signup_form__title",
    "wording__version",
    "wording_text",
]


def export_rows(queryset: QuerySet[Subscriber], *, audience_names: dict[int, str]) -> Iterator[list[str]]:
    """One CSV row per subscriber of ``queryset``, newest first, header first.

    Reads ``EXPORT_CHUNK_SIZE`` subscribers at a time from a server-side cursor;
    each chunk brings its active subscriptions and its requested/confirmed
    consent events in two more queries, so the number of queries grows with the
    chunks, never with the rows, and memory stays flat. Plain tuples, not model
    instances: building a million models would be most of the export's time.
    """
    rows = (
        queryset.order_by("-created_at", "-pk").values_list(*_SUBSCRIBER_FIELDS).iterator(chunk_size=EXPORT_CHUNK_SIZE)
    )
    yield EXPORT_COLUMNS
    while chunk := list(islice(rows, EXPORT_CHUNK_SIZE)):
        audiences, events = _chunk_details([row[0] for row in chunk])
        for pk, email, name, language, status, source, created_at, confirmed_at, unsubscribed_at in chunk:
            confirmed, requested = _evidence(events.get(pk, []))
            values: list[Any] = [
                email,
                name,
                language,
                status,
                source,
                _iso(created_at),
                _iso(confirmed_at),
                _iso(unsubscribed_at),
                "; ".join(sorted(audience_names.get(a, "") for a in audiences.get(pk, []))),
                _iso(confirmed.created_at) if confirmed else "",
                confirmed.ip if confirmed else "",
                confirmed.user_agent if confirmed else "",
                confirmed.source if confirmed else "",
                requested.form_title if requested else "",
                requested.wording_version if requested else "",
                requested.wording_text if requested else "",
            ]
            yield [csv_cell(v) for v in values]


class Echo:
    """A file-like object whose ``write`` hands the line back, so csv.writer can feed a generator."""

    def write(self, value: str) -> str:
        return value


def stream_csv(*, brand: Brand, filters: Filters) -> Iterator[str]:
    """The CSV export of ``filters``, line by line, for a ``StreamingHttpResponse``.

    Runs inside a transaction so PostgreSQL streams the server-side cursor
    instead of materialising the whole result first (outside a transaction
    Django must declare it WITH HOLD); a client that goes away closes the
    generator, which rolls the read-only transaction back.
    """
    audience_names = dict(Audience.objects.filter(brand=brand).values_list("pk", "name"))
    writer = csv.writer(Echo())
    with transaction.atomic():
        rows: Iterable[list[str]] = export_rows(filtered(brand=brand, filters=filters), audience_names=audience_names)
        for row in rows:
            yield writer.writerow(row)
