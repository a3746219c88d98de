"""CSV imports: upload a file, map its columns, state the consent basis, import it in chunks.

The rules an import keeps, whatever the file says:

- Suppressed, blocked and erased addresses are never added back; unsubscribed
  people (or audiences they left) are not re-subscribed. Each is reported.
- A row is confirmed only with proof: a per-row double-opt-in confirmation time
  (with the stated source), or the team's attestation for the whole file (source,
  date, wording), recorded as a ``ConsentEvent`` with the importing user. Rows
  without proof become pending and are never mailed until the person confirms.
- A confirmed subscriber is never downgraded; existing names and languages are
  the person's own and are only filled in when empty.
- Running the same file again writes nothing: every write is decided against the
  current state, and an event is written only where consent changed.

The file is read as a stream and processed in chunks of ``CHUNK_ROWS`` with a
fixed number of queries each, so memory stays flat with file size.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import partial
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.db.models import Count, Exists, F, OuterRef, Q
from django.utils import timezone
from django.utils.translation import gettext as _

from audiences import audit
from audiences.consent import normalise_email
from audiences.models import (
    Audience,
    Brand,
    ConsentEvent,
    ConsumerEmail,
    ImportIssue,
    ImportJob,
    Subscriber,
    Subscription,
    Suppression,
    email_hash,
)

log = logging.getLogger(__name__)

CHUNK_ROWS = 2000
PREVIEW_ROWS = 5
SAMPLE_BYTES = 64 * 1024
MAX_COLUMNS = 200
MAX_ATTRIBUTE_LENGTH = 1000
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
# A run that has not advanced its job for this long is presumed dead and another run may take
# over (a chunk takes about a second). Shorter than the task's retries add up to, so a retry can.
STALE_AFTER = timedelta(minutes=2)
CHUNK_ATTEMPTS = 3
DELIMITERS = ",;\t|"

Status = ImportJob.Status
Basis = ImportJob.Basis
Reason = ImportIssue.Reason
NAME_MAX = Subscriber._meta.get_field("name").max_length or 100

# Row outcomes, each row counted once; "pending" also counts rows left awaiting confirmation.
OUTCOMES = ["created", "updated", "unchanged", "unsubscribed", "blocked", "suppressed", "erased", "invalid"]
_SUPPRESSION_OUTCOME: dict[str, tuple[ImportIssue.Reason, str]] = {
    Suppression.Reason.ERASED: (Reason.ERASED, "erased"),
    Suppression.Reason.BLOCKED: (Reason.BLOCKED, "blocked"),
}


class ImportRefused(Exception):
    """The team asked for something this import cannot do; the message says why."""


class ImportFileError(ImportRefused):
    """The file is not a CSV file we can read."""


def max_bytes() -> int:
    return int(getattr(settings, "IMPORT_MAX_BYTES", DEFAULT_MAX_BYTES))


@dataclass(frozen=True)
class Mapping:
    """Which column (0-based index) holds what; ``None``: not in the file."""

    email: int
    name: int | None = None
    language: int | None = None
    confirmed_at: int | None = None
    attributes: tuple[int, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "name": self.name,
            "language": self.language,
            "confirmed_at": self.confirmed_at,
            "attributes": list(self.attributes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mapping:
        return cls(
            email=data["email"],
            name=data.get("name"),
            language=data.get("language"),
            confirmed_at=data.get("confirmed_at"),
            attributes=tuple(data.get("attributes", ())),
        )

    def columns(self) -> list[int]:
        single = [self.email, self.name, self.language, self.confirmed_at]
        return [c for c in single if c is not None] + list(self.attributes)


def attribute_key(header: Sequence[str], index: int) -> str:
    """The attribute name a column's values are stored under: its header, or ``column_N``."""
    name = header[index].strip()[:64] if index < len(header) else ""
    return name or f"column_{index + 1}"


# --- Reading the file ------------------------------------------------------------


@dataclass(frozen=True)
class CsvInfo:
    encoding: str
    delimiter: str
    header: list[str]
    rows: int
    sha256: str


def _records(reader: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank record; a broken file becomes ``ImportFileError``."""
    try:
        for row in reader:
            if any(cell.strip() for cell in row):
                yield reader.line_num, row
    except UnicodeDecodeError as exc:
        raise ImportFileError(
            _("After line %(line)s the file is not UTF-8 text. Save it as “CSV UTF-8” and upload it again.")
            % {"line": reader.line_num}
        ) from exc
    except csv.Error as exc:
        raise ImportFileError(
            _("Line %(line)s cannot be read as CSV (%(error)s).") % {"line": reader.line_num, "error": exc}
        ) from exc


@contextmanager
def _open_records(file: Any, encoding: str, delimiter: str) -> Iterator[Iterator[tuple[int, list[str]]]]:
    """The file's records, read as a stream (header included)."""
    try:
        binary = file.storage.open(file.name, "rb")
    except FileNotFoundError as exc:
        raise ImportFileError(_("The uploaded file is no longer there. Upload it again.")) from exc
    with io.TextIOWrapper(binary, encoding=encoding, newline="") as text:
        yield _records(csv.reader(text, delimiter=delimiter, strict=False))


def _sniff(sample: bytes) -> tuple[str, str]:
    """Encoding (UTF-8, with or without BOM) and delimiter, from the file's first bytes."""
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ImportFileError(_("The file is UTF-16 text. Save it as “CSV UTF-8” and upload it again."))
    encoding = "utf-8-sig" if sample.startswith(codecs.BOM_UTF8) else "utf-8"
    try:
        # Incremental: the sample may end inside a multi-byte character.
        text = codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
    except UnicodeDecodeError as exc:
        raise ImportFileError(_("The file is not UTF-8 text. Save it as “CSV UTF-8” and upload it again.")) from exc
    if "\0" in text:
        raise ImportFileError(_("This is not a CSV file."))
    lines = text[: text.rfind("\n") + 1] or text
    try:
        delimiter = csv.Sniffer().sniff(lines, delimiters=DELIMITERS).delimiter
    except csv.Error:
        delimiter = ","  # one column, or too little to tell
    return encoding, delimiter


def inspect_file(file: Any) -> CsvInfo:
    """Read a stored file once, streaming: its encoding, delimiter, header, row count and sha256."""
    with file.storage.open(file.name, "rb") as binary:
        encoding, delimiter = _sniff(binary.read(SAMPLE_BYTES))
        binary.seek(0)
        digest = hashlib.file_digest(binary, "sha256").hexdigest()
    header: list[str] | None = None
    rows = 0
    with _open_records(file, encoding, delimiter) as records:
        for _line, row in records:
            if header is None:
                header = [cell.strip() for cell in row]
            else:
                rows += 1
    if header is None:
        raise ImportFileError(_("The file is empty."))
    if len(header) > MAX_COLUMNS:
        raise ImportFileError(_("The file has more than %(n)s columns.") % {"n": MAX_COLUMNS})
    if not rows:
        raise ImportFileError(_("The file has a header line but no rows."))
    return CsvInfo(encoding=encoding, delimiter=delimiter, header=header, rows=rows, sha256=digest)


def preview(job: ImportJob, rows: int = PREVIEW_ROWS) -> list[list[str]]:
    """The first few rows under the header, for the mapping page."""
    found: list[list[str]] = []
    with _open_records(job.file, job.encoding, job.delimiter) as records:
        next(records, None)
        for _line, row in records:
            found.append(row)
            if len(found) >= rows:
                break
    return found


# --- Creating and starting a job ------------------------------------------------


def create(*, brand: Brand, user: User, upload: File) -> ImportJob:
    """Store an uploaded CSV file as a new job (status uploaded).

    1. Refuse a file that is too large or not named ``.csv``.
    2. Store it under a random name and read it once, streaming: encoding,
       delimiter, header, rows, sha256. A file that is not UTF-8 CSV is deleted
       again and refused with ``ImportFileError``.
    3. Create the job and its audit event in one transaction.
    """
    name = (upload.name or "").rsplit("/", 1)[-1]
    if not name.lower().endswith(".csv"):
        raise ImportFileError(_("Upload a .csv file."))
    if (upload.size or 0) > max_bytes():
        raise ImportFileError(_("The file is larger than %(mb)s MB.") % {"mb": max_bytes() // (1024 * 1024)})
    job = ImportJob(brand=brand, created_by=user, file_name=name[:255], file_size=upload.size or 0)
    job.file.save(name, upload, save=False)
    try:
        info = inspect_file(job.file)
        job.encoding, job.delimiter, job.header = info.encoding, info.delimiter, info.header
        job.total_rows, job.file_sha256 = info.rows, info.sha256
        with transaction.atomic():
            job.save()
            audit.record(
                brand=brand,
                user=user,
                action="import.created",
                target=job.file_name,
                details={"job": job.pk, "rows": info.rows, "sha256": info.sha256},
            )
    except BaseException:
        job.file.delete(save=False)
        raise
    return job


def start(
    *,
    job: ImportJob,
    user: User,
    mapping: Mapping,
    audiences: Sequence[Audience],
    basis: str,
    consent_source: str = "",
    attested_on: date | None = None,
    wording: str = "",
) -> ImportJob:
    """Fix the mapping, audiences and consent basis, and queue the import (uploaded → queued).

    The consent basis is the team's statement, recorded with ``user`` as the
    evidence on every row it confirms. Raises ``ImportRefused`` if the job was
    already started; ``ValueError`` for a mapping or basis no form would allow.
    """
    _check(job, mapping, audiences, basis, consent_source, attested_on, wording)
    now = timezone.now()
    with transaction.atomic():
        claimed = ImportJob.objects.filter(pk=job.pk, status=Status.UPLOADED).update(
            status=Status.QUEUED,
            mapping=mapping.as_json(),
            basis=basis,
            consent_source=consent_source.strip(),
            attested_on=attested_on if basis == Basis.ATTESTATION else None,
            attestation_wording=wording.strip(),
            started_by=user,
            started_at=now,
        )
        if claimed != 1:
            raise ImportRefused(_("This import has already been started."))
        job.audiences.set(audiences)
        audit.record(
            brand=job.brand,
            user=user,
            action="import.started",
            target=job.file_name,
            details={
                "job": job.pk,
                "basis": basis,
                "audiences": [{"id": a.pk, "name": a.name} for a in audiences],
                "rows": job.total_rows,
                "sha256": job.file_sha256,
            },
        )
        _enqueue(job.pk)
    job.refresh_from_db()
    return job


def _enqueue(job_id: int) -> None:
    from audiences.tasks import run_import

    transaction.on_commit(lambda: run_import.delay(job_id))


def _check(
    job: ImportJob,
    mapping: Mapping,
    audiences: Sequence[Audience],
    basis: str,
    consent_source: str,
    attested_on: date | None,
    wording: str,
) -> None:
    columns = mapping.columns()
    if any(not 0 <= c < len(job.header) for c in columns) or len(set(columns)) != len(columns):
        raise ValueError("each mapped column must exist and be mapped once")
    if not audiences or any(a.brand_id != job.brand_id or a.archived_at for a in audiences):
        raise ValueError("audiences must be this brand's current audiences")
    if basis == Basis.COLUMN and (mapping.confirmed_at is None or not consent_source.strip()):
        raise ValueError("a confirmation-time basis needs its column and a source")
    if basis == Basis.ATTESTATION and (attested_on is None or not consent_source.strip() or not wording.strip()):
        raise ValueError("an attestation needs a source, a date and the wording")
    if basis not in Basis.values:
        raise ValueError(f"unknown basis {basis!r}")


# --- Running a job --------------------------------------------------------------


class _LostClaim(Exception):
    """Another run took the job over; this one must stop without writing."""


@dataclass
class _Row:
    line: int
    raw_email: str
    email: str
    hash: str
    name: str
    language: str
    attributes: dict[str, str]
    proof: datetime | None


@dataclass
class _Run:
    """What every chunk of one run needs, worked out once."""

    job: ImportJob
    attempt: int
    mapping: Mapping
    audiences: list[Audience]
    attribute_keys: list[tuple[int, str]]
    languages: dict[str, str]
    attested_at: datetime | None
    user_email: str
    seen_table: str
    counts: Counter[str] = field(default_factory=Counter)
    processed: int = 0

    @classmethod
    def build(cls, job: ImportJob) -> _Run:
        mapping = Mapping.from_json(job.mapping)
        audiences = list(job.audiences.filter(archived_at__isnull=True).order_by("name"))
        if not audiences:
            raise ImportFileError(_("Every audience chosen for this import has been archived."))
        attested_at = None
        if job.basis == Basis.ATTESTATION and job.attested_on:
            attested_at = datetime.combine(job.attested_on, time.min, tzinfo=UTC)
        return cls(
            job=job,
            attempt=job.attempt,
            mapping=mapping,
            audiences=audiences,
            attribute_keys=[(i, attribute_key(job.header, i)) for i in mapping.attributes],
            languages={code.lower(): code for code, _label in settings.LANGUAGES},
            attested_at=attested_at,
            user_email=job.started_by.email if job.started_by else "",
            seen_table=f"assent_import_seen_{int(job.pk)}",
            counts=Counter(job.counts),
            processed=job.processed_rows,
        )

    def issue(self, row: _Row | int, reason: str, detail: str = "", raw_email: str = "") -> ImportIssue:
        line, email = (row.line, row.raw_email) if isinstance(row, _Row) else (row, raw_email)
        return ImportIssue(job_id=self.job.pk, line=line, email=email.strip()[:254], reason=reason, detail=detail[:255])


def run(*, job_id: int, chunk_rows: int = CHUNK_ROWS) -> str:
    """Run (or resume) a queued import; safe to call twice.

    1. Claim the job with a conditional update: queued → running, or take over a
       running job whose heartbeat is older than ``STALE_AFTER``. ``attempt``
       goes up by one and fences off any older run. Not claimed: return.
    2. Stream the file, skipping the header and the rows already processed.
    3. Each chunk is one transaction: its subscribers, subscriptions, consent
       events and report rows, then the job's progress (conditional on
       ``attempt``; if another run took over, roll back and stop).
    4. Mark the job done. A file that turns out unreadable fails the job with
       the reason; any other error puts it back to queued for the task's retry.
    """
    job = _claim(job_id)
    if job is None:
        return "not claimed"
    state: _Run | None = None
    try:
        state = _Run.build(job)
        _create_seen_table(state.seen_table)
        with _open_records(job.file, job.encoding, job.delimiter) as records:
            for _skipped in zip(range(job.processed_rows + 1), records, strict=False):
                pass  # the header, then what earlier runs committed
            for chunk in _chunks(records, chunk_rows):
                _import_chunk_retrying(state, chunk)
        _finish(state)
    except _LostClaim:
        log.warning("import %s: another run took over", job_id)
        return "lost"
    except ImportFileError as exc:
        _fail(job_id, job.attempt, str(exc))
        return "failed"
    except Exception:
        # Back to queued so the task's retry can claim it and resume after the last chunk. With
        # the database gone this fails too; the heartbeat then goes stale and a later retry takes over.
        with suppress(DatabaseError):
            ImportJob.objects.filter(pk=job_id, status=Status.RUNNING, attempt=job.attempt).update(status=Status.QUEUED)
        raise
    finally:
        if state is not None:
            with suppress(DatabaseError):
                _drop_seen_table(state.seen_table)
    return "done"


def mark_failed(*, job_id: int, error: str) -> None:
    """The task's final failure after its retries."""
    ImportJob.objects.filter(pk=job_id).exclude(status=Status.DONE).update(
        status=Status.FAILED, error=error[:2000], finished_at=timezone.now()
    )
    log.error("import %s failed: %s", job_id, error)


def _claim(job_id: int) -> ImportJob | None:
    now = timezone.now()
    stale = Q(status=Status.RUNNING, heartbeat_at__lt=now - STALE_AFTER)
    claimed = ImportJob.objects.filter(Q(status=Status.QUEUED) | stale, pk=job_id).update(
        status=Status.RUNNING, heartbeat_at=now, attempt=F("attempt") + 1
    )
    if claimed != 1:
        return None
    return ImportJob.objects.select_related("brand", "started_by").get(pk=job_id)


def _finish(state: _Run) -> None:
    updated = ImportJob.objects.filter(pk=state.job.pk, status=Status.RUNNING, attempt=state.attempt).update(
        status=Status.DONE, finished_at=timezone.now(), heartbeat_at=timezone.now(), counts=_all_counts(state.counts)
    )
    if updated != 1:
        raise _LostClaim
    log.info("import %s done: %s", state.job.pk, dict(state.counts))


def _fail(job_id: int, attempt: int, error: str) -> None:
    ImportJob.objects.filter(pk=job_id, status=Status.RUNNING, attempt=attempt).update(
        status=Status.FAILED, error=error[:2000], finished_at=timezone.now()
    )


def _chunks(records: Iterator[tuple[int, list[str]]], size: int) -> Iterator[list[tuple[int, list[str]]]]:
    chunk: list[tuple[int, list[str]]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _import_chunk_retrying(state: _Run, chunk: list[tuple[int, list[str]]]) -> None:
    """A signup may create an address between our lookup and our insert: then redo the chunk."""
    for attempt in range(1, CHUNK_ATTEMPTS + 1):
        try:
            with transaction.atomic():
                counts = import_chunk(state, chunk)
                _advance(state, len(chunk), counts)
            break
        except IntegrityError:
            if attempt == CHUNK_ATTEMPTS:
                raise
            log.info("import %s: conflict in a chunk, retrying it", state.job.pk)
    state.counts.update(counts)
    state.processed += len(chunk)
    # With DEBUG on, Django keeps the SQL of the last 9,000 queries: for bulk inserts of a big
    # file that is gigabytes. Unless a test is capturing them, forget them after each chunk.
    if not connection.force_debug_cursor:
        connection.queries_log.clear()


def _all_counts(counts: Counter[str]) -> dict[str, int]:
    """Every outcome, zeros included (adding Counters drops them)."""
    return {key: counts[key] for key in [*OUTCOMES, "pending"]}


def _advance(state: _Run, rows: int, counts: Counter[str]) -> None:
    total = state.counts + counts
    updated = ImportJob.objects.filter(pk=state.job.pk, status=Status.RUNNING, attempt=state.attempt).update(
        processed_rows=state.processed + rows, counts=_all_counts(total), heartbeat_at=timezone.now()
    )
    if updated != 1:
        raise _LostClaim


# --- One chunk ------------------------------------------------------------------


def import_chunk(state: _Run, chunk: list[tuple[int, list[str]]]) -> Counter[str]:
    """Import one chunk of records; call inside a transaction. Returns the chunk's counts.

    A fixed number of queries whatever the chunk's size: remember the chunk's
    addresses (to spot duplicates across chunks), look up suppressions, lock the
    existing subscribers, read their subscriptions, then write subscribers,
    subscriptions, consent events and report rows in bulk.
    """
    now = timezone.now()
    counts: Counter[str] = Counter()
    issues: list[ImportIssue] = []
    rows: dict[str, _Row] = {}
    for line, fields in chunk:
        row = _parse(state, line, fields, now, issues)
        if row is None:
            counts["invalid"] += 1
        elif row.email in rows:
            issues.append(state.issue(row, Reason.DUPLICATE, _("first on line %(n)s") % {"n": rows[row.email].line}))
            counts["invalid"] += 1
        else:
            rows[row.email] = row
    for row in _seen_before(state, rows.values(), issues):
        del rows[row.email]
        counts["invalid"] += 1
    plan = _Plan(state, now)
    if rows:
        suppressed = dict(
            Suppression.objects.filter(
                brand_id=state.job.brand_id, email_hash__in=[r.hash for r in rows.values()]
            ).values_list("email_hash", "reason")
        )
        existing = {
            s.email: s
            for s in Subscriber.objects.select_for_update()
            .filter(brand_id=state.job.brand_id, email__in=list(rows))
            .order_by("pk")
        }
        current = {
            (sid, aid): status
            for sid, aid, status in Subscription.objects.filter(
                subscriber_id__in=[s.pk for s in existing.values()], audience_id__in=[a.pk for a in state.audiences]
            ).values_list("subscriber_id", "audience_id", "status")
        }
        for row in rows.values():
            outcome = plan.add(row, suppressed.get(row.hash), existing.get(row.email), current)
            counts[outcome] += 1
    counts["pending"] += plan.pending
    issues.extend(plan.issues)
    plan.write()
    if issues:
        ImportIssue.objects.bulk_create(issues)
    return counts


def _parse(state: _Run, line: int, fields: list[str], now: datetime, issues: list[ImportIssue]) -> _Row | None:
    """One record as a row to import, or ``None`` with its report entry."""
    mapping = state.mapping
    raw_email = fields[mapping.email] if mapping.email < len(fields) else ""
    width = len(state.job.header)
    if len(fields) != width:
        detail = _("expected %(n)s fields, found %(m)s") % {"n": width, "m": len(fields)}
        issues.append(state.issue(line, Reason.FIELD_COUNT, detail, raw_email))
        return None
    try:
        email = normalise_email(raw_email)
    except ValidationError:
        issues.append(state.issue(line, Reason.INVALID_EMAIL, raw_email=raw_email))
        return None
    name = fields[mapping.name].strip() if mapping.name is not None else ""
    if len(name) > NAME_MAX:
        issues.append(state.issue(line, Reason.TOO_LONG, _("name"), raw_email))
        return None
    language = state.job.brand.default_language
    if mapping.language is not None and fields[mapping.language].strip():
        raw_language = fields[mapping.language].strip()
        found = state.languages.get(raw_language.replace("_", "-").split("-")[0].lower())
        if found is None:
            issues.append(state.issue(line, Reason.UNKNOWN_LANGUAGE, raw_language, raw_email))
            return None
        language = found
    attributes: dict[str, str] = {}
    for index, key in state.attribute_keys:
        value = fields[index].strip()
        if len(value) > MAX_ATTRIBUTE_LENGTH:
            issues.append(state.issue(line, Reason.TOO_LONG, key, raw_email))
            return None
        if value:
            attributes[key] = value
    row = _Row(line, raw_email, email, email_hash(email), name, language, attributes, state.attested_at)
    if state.job.basis == Basis.COLUMN and state.mapping.confirmed_at is not None:
        raw_time = fields[state.mapping.confirmed_at].strip()
        row.proof = parse_confirmation_time(raw_time, now)
        if raw_time and row.proof is None:
            issues.append(state.issue(row, Reason.BAD_TIME, raw_time))
    return row


def parse_confirmation_time(raw: str, now: datetime) -> datetime | None:
    """An ISO 8601 time (naive means UTC) not in the future, else ``None``: no proof."""
    if not raw:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if timezone.is_naive(value):
        value = value.replace(tzinfo=UTC)
    return value if value <= now else None


class _Plan:
    """What one chunk will write, decided row by row against the locked current state."""

    def __init__(self, state: _Run, now: datetime) -> None:
        self.state = state
        self.now = now
        self.new_subscribers: list[Subscriber] = []
        self.changed_subscribers: list[Subscriber] = []
        self.subscriptions: list[Subscription] = []
        self.events: list[ConsentEvent] = []
        self.issues: list[ImportIssue] = []
        self.pending = 0

    def add(
        self,
        row: _Row,
        suppression: str | None,
        subscriber: Subscriber | None,
        current: dict[tuple[int, int], str],
    ) -> str:
        """Plan one row; return its outcome."""
        if suppression is not None:
            reason, outcome = _SUPPRESSION_OUTCOME.get(suppression, (Reason.SUPPRESSED, "suppressed"))
            self.issues.append(self.state.issue(row, reason))
            return outcome
        if subscriber is None:
            return self._create(row)
        if subscriber.status == Subscriber.Status.BLOCKED:
            self.issues.append(self.state.issue(row, Reason.BLOCKED))
            return "blocked"
        if subscriber.status == Subscriber.Status.UNSUBSCRIBED:
            self.issues.append(self.state.issue(row, Reason.UNSUBSCRIBED))
            return "unsubscribed"
        return self._update(row, subscriber, current)

    def _create(self, row: _Row) -> str:
        confirmed = row.proof is not None
        subscriber = Subscriber(
            brand_id=self.state.job.brand_id,
            email=row.email,
            email_hash=row.hash,
            name=row.name,
            language=row.language,
            attributes=row.attributes,
            status=Subscriber.Status.CONFIRMED if confirmed else Subscriber.Status.PENDING,
            confirmed_at=row.proof,
            source=ConsentEvent.Source.IMPORT,
            created_at=self.now,
        )
        self.new_subscribers.append(subscriber)
        self._subscribe(row, subscriber, self.state.audiences, [])
        return "created"

    def _update(self, row: _Row, subscriber: Subscriber, current: dict[tuple[int, int], str]) -> str:
        add: list[Audience] = []
        activate: list[Audience] = []
        waiting: list[Audience] = []
        withdrawn: list[Audience] = []
        for audience in self.state.audiences:
            status = current.get((subscriber.pk, audience.pk))
            if status is None:
                add.append(audience)
            elif status == Subscription.Status.PENDING:
                (activate if row.proof else waiting).append(audience)
            elif status == Subscription.Status.INACTIVE:
                withdrawn.append(audience)
        if withdrawn:
            names = ", ".join(a.name for a in withdrawn)
            self.issues.append(self.state.issue(row, Reason.UNSUBSCRIBED, names))
        profile = self._merge_profile(row, subscriber)
        if row.proof and (add or activate) and subscriber.status == Subscriber.Status.PENDING:
            subscriber.status = Subscriber.Status.CONFIRMED
            subscriber.confirmed_at = row.proof
            profile = True
        if profile:
            self.changed_subscribers.append(subscriber)
        if add or activate:
            self._subscribe(row, subscriber, add, activate)
        elif waiting:
            self.pending += 1
        if add or activate or profile:
            return "updated"
        return "unsubscribed" if withdrawn else "unchanged"

    def _merge_profile(self, row: _Row, subscriber: Subscriber) -> bool:
        """The file fills an empty name and sets its attribute columns; the person's language stays."""
        changed = False
        if row.name and not subscriber.name:
            subscriber.name = row.name
            changed = True
        merged = {**subscriber.attributes, **row.attributes}
        if merged != subscriber.attributes:
            subscriber.attributes = merged
            changed = True
        return changed

    def _subscribe(self, row: _Row, subscriber: Subscriber, add: list[Audience], activate: list[Audience]) -> None:
        """New subscriptions (active with proof, else pending), pending ones made active, and the event."""
        status = Subscription.Status.ACTIVE if row.proof else Subscription.Status.PENDING
        for audience in [*add, *activate]:
            self.subscriptions.append(
                Subscription(
                    subscriber=subscriber,
                    audience=audience,
                    status=status,
                    source=ConsentEvent.Source.IMPORT,
                    requested_at=self.now,
                    confirmed_at=row.proof,
                )
            )
        if not row.proof:
            self.pending += 1
        self.events.append(self._event(row, subscriber, [*add, *activate]))

    def _event(self, row: _Row, subscriber: Subscriber, audiences: list[Audience]) -> ConsentEvent:
        """The evidence, with the same fields ``consent.record_event`` writes.

        Confirmed rows carry the basis (the per-row time or the attestation and
        its wording) and the importing user; rows without proof are recorded as
        requested by the team, which is all the team can say.
        """
        job = self.state.job
        details: dict[str, Any] = {
            "import_job": job.pk,
            "file": job.file_name,
            "file_sha256": job.file_sha256,
            "line": row.line,
            "basis": job.basis,
            "consent_source": job.consent_source,
            "imported_by": self.state.user_email,
            "confirmed_at": row.proof.isoformat() if row.proof else None,
        }
        if job.basis == Basis.ATTESTATION:
            details["attested_on"] = job.attested_on.isoformat() if job.attested_on else None
        return ConsentEvent(
            brand_id=job.brand_id,
            subscriber=subscriber,
            kind=ConsentEvent.Kind.CONFIRMED if row.proof else ConsentEvent.Kind.REQUESTED,
            created_at=self.now,
            actor=ConsentEvent.Actor.TEAM,
            actor_user_id=job.started_by_id,
            source=ConsentEvent.Source.IMPORT,
            wording_text=job.attestation_wording,
            audiences=[{"id": a.pk, "name": a.name} for a in audiences],
            details=details,
        )

    def write(self) -> None:
        """Subscribers first (their ids are needed), then subscriptions and events."""
        if self.new_subscribers:
            Subscriber.objects.bulk_create(self.new_subscribers)
        if self.changed_subscribers:
            Subscriber.objects.bulk_update(self.changed_subscribers, ["status", "confirmed_at", "name", "attributes"])
        if self.subscriptions:
            # Rows that exist are pending ones being confirmed: only their status changes.
            Subscription.objects.bulk_create(
                self.subscriptions,
                update_conflicts=True,
                unique_fields=["subscriber", "audience"],
                update_fields=["status", "confirmed_at"],
            )
        if self.events:
            ConsentEvent.objects.bulk_create(self.events)


# Addresses seen earlier in the same run live in a temporary table, not in memory,
# so a million-row file costs the worker no more than a small one. A run that
# resumes on a new connection starts an empty table: a duplicate across that
# boundary is then reported as already present instead.


def _create_seen_table(table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TEMPORARY TABLE IF NOT EXISTS {table} (h char(64) PRIMARY KEY, line integer NOT NULL)")


def _drop_seen_table(table: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {table}")


def _seen_before(state: _Run, rows: Iterable[_Row], issues: list[ImportIssue]) -> list[_Row]:
    """Remember this chunk's addresses; return (and report) those an earlier chunk already had."""
    by_hash = {row.hash: row for row in rows}
    if not by_hash:
        return []
    values = ", ".join(["(%s, %s)"] * len(by_hash))
    params: list[Any] = [v for row in by_hash.values() for v in (row.hash, row.line)]
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {state.seen_table} (h, line) VALUES {values} ON CONFLICT (h) DO NOTHING RETURNING h",  # noqa: S608
            params,
        )
        fresh = {h for (h,) in cursor.fetchall()}
        repeated = [h for h in by_hash if h not in fresh]
        if not repeated:
            return []
        marks = ", ".join(["%s"] * len(repeated))
        cursor.execute(f"SELECT h, line FROM {state.seen_table} WHERE h IN ({marks})", repeated)  # noqa: S608
        first = dict(cursor.fetchall())
    found = [by_hash[h] for h in repeated]
    for row in found:
        issues.append(state.issue(row, Reason.DUPLICATE, _("first on line %(n)s") % {"n": first.get(row.hash, "?")}))
    return found


# --- After the import -----------------------------------------------------------


def request_confirmations(*, job: ImportJob, user: User, chunk_size: int = CHUNK_ROWS) -> int:
    """Send one confirmation request to each person this import left pending; once per job.

    1. Claim the job's one request (a conditional update) and record the audit
       event, in the same transaction as everything below.
    2. In chunks: the people this job recorded as requested, still pending for
       its audiences, not blocked or suppressed, and within the per-address
       limits on confirmation emails (``CONFIRMATION_MIN_INTERVAL_MINUTES``,
       ``CONFIRMATION_DAILY_CAP``, as in ``consent._throttled``).
    3. A ``ConsumerEmail`` row each, sent by ``send_consumer_email`` after
       commit (which checks again at send time). Returns how many were queued.
    """
    now = timezone.now()
    with transaction.atomic():
        claimed = ImportJob.objects.filter(
            pk=job.pk, status=Status.DONE, confirmations_requested_at__isnull=True
        ).update(confirmations_requested_at=now, confirmations_requested_by=user)
        if claimed != 1:
            raise ImportRefused(_("Confirmation requests can be sent once, after the import has finished."))
        queued = 0
        for ids in _pending_chunks(job, now, chunk_size):
            rows = ConsumerEmail.objects.bulk_create(
                [
                    ConsumerEmail(subscriber_id=sid, kind=ConsumerEmail.Kind.CONFIRM, audience_ids=aids)
                    for sid, aids in ids.items()
                ]
            )
            email_ids = [row.pk for row in rows]
            transaction.on_commit(partial(_send_all, email_ids))
            queued += len(email_ids)
        ImportJob.objects.filter(pk=job.pk).update(confirmations_queued=queued)
        audit.record(
            brand=job.brand,
            user=user,
            action="import.confirmation_requests_sent",
            target=job.file_name,
            details={"job": job.pk, "queued": queued},
        )
    job.refresh_from_db()
    return queued


def _send_all(email_ids: list[int]) -> None:
    from audiences.tasks import send_consumer_email

    for pk in email_ids:
        send_consumer_email.delay(pk)


def _pending_chunks(job: ImportJob, now: datetime, size: int) -> Iterator[dict[int, list[int]]]:
    """{subscriber id: pending audience ids} for this job's pending people, a chunk at a time."""
    audience_ids = list(job.audiences.values_list("pk", flat=True))
    requested = (
        ConsentEvent.objects.filter(
            brand_id=job.brand_id,
            kind=ConsentEvent.Kind.REQUESTED,
            source=ConsentEvent.Source.IMPORT,
            details__import_job=job.pk,
        )
        .order_by("subscriber_id")
        .values_list("subscriber_id", flat=True)
    )
    suppressed = Suppression.objects.filter(brand_id=job.brand_id, email_hash=OuterRef("subscriber__email_hash"))
    last = 0
    while ids := list(requested.filter(subscriber_id__gt=last)[:size]):
        last = ids[-1]
        pending: dict[int, list[int]] = {}
        for sid, aid in (
            Subscription.objects.filter(
                subscriber_id__in=ids, audience_id__in=audience_ids, status=Subscription.Status.PENDING
            )
            .exclude(subscriber__status=Subscriber.Status.BLOCKED)
            .exclude(Exists(suppressed))
            .order_by("subscriber_id", "audience_id")
            .values_list("subscriber_id", "audience_id")
        ):
            pending.setdefault(sid, []).append(aid)
        for sid in _throttled(list(pending), now):
            del pending[sid]
        if pending:
            yield pending


def _throttled(subscriber_ids: list[int], now: datetime) -> set[int]:
    """``consent._throttled`` for many addresses in one query: a confirmation email within
    the minimum interval, or the daily cap reached."""
    interval = now - timedelta(minutes=settings.CONFIRMATION_MIN_INTERVAL_MINUTES)
    recent = (
        ConsumerEmail.objects.filter(
            subscriber_id__in=subscriber_ids, kind=ConsumerEmail.Kind.CONFIRM, created_at__gte=now - timedelta(days=1)
        )
        .values("subscriber_id")
        .annotate(day=Count("id"), interval=Count("id", filter=Q(created_at__gte=interval)))
    )
    return {r["subscriber_id"] for r in recent if r["interval"] or r["day"] >= settings.CONFIRMATION_DAILY_CAP}


# --- Reading jobs ---------------------------------------------------------------


def running(*, brand: Brand) -> list[ImportJob]:
    """Queued and running imports, oldest first, for the overview."""
    return list(ImportJob.objects.filter(brand=brand, status__in=[Status.QUEUED, Status.RUNNING]).order_by("pk")[:10])


def progress(job: ImportJob) -> dict[str, Any]:
    """The job's state as the progress page and its JSON endpoint show it."""
    percent = int(job.processed_rows * 100 / job.total_rows) if job.total_rows else 0
    return {
        "status": job.status,
        "status_label": str(job.get_status_display()),
        "processed": job.processed_rows,
        "total": job.total_rows,
        "percent": 100 if job.status == Status.DONE else min(percent, 99),
        "counts": {key: int(job.counts.get(key, 0)) for key in [*OUTCOMES, "pending"]},
        "finished": job.status in {Status.DONE, Status.FAILED},
        "error": job.error,
    }


def _safe_cell(value: str) -> str:
    """Keep spreadsheet programs from running a cell that starts like a formula."""
    return "'" + value if value[:1] in {"=", "+", "-", "@", "\t", "\r"} else value


def report_rows(job: ImportJob) -> Iterator[list[str]]:
    """The report CSV: every row not imported as given, with the reason, in file order."""
    yield [_("line"), _("email"), _("reason"), _("detail")]
    labels = dict(Reason.choices)
    for issue in job.issues.order_by("line", "pk").iterator(chunk_size=CHUNK_ROWS):
        yield [
            str(issue.line),
            _safe_cell(issue.email),
            str(labels.get(issue.reason, issue.reason)),
            _safe_cell(issue.detail),
        ]
