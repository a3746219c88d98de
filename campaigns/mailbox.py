"""Read the bounce mailbox: record the bounce and complaint reports in each message, then remove it.

``BOUNCE_MAILBOX_URL`` (or ``manage.py read_bounces --url``) names the mailbox::

    imap://user:password@host:143/INBOX      imaps://user:password@host:993/INBOX
    pop3://user:password@host:110            pop3s://user:password@host:995

Options in the query string: ``starttls=true`` upgrades ``imap://`` and
``pop3://`` to TLS; ``timeout=30`` (seconds); for IMAP only, ``processed=Folder``
moves the messages read instead of deleting them and ``unparsed=Folder`` moves
the messages that are not bounce reports out of the way (else they stay where
they are). Characters special in URLs (``@ : / ?``) in the user name or password
are percent-encoded. Certificates are verified against the system's CAs
(``SSL_CERT_FILE`` names another bundle).

One pass (``read_once``):

1. connect and log in; any failure is a ``MailboxError`` with a one-line reason;
2. for each message, ``dsn.parse``; when it holds reports, record them all in one
   transaction (``bounces.record`` deduplicates, so a message read twice records
   nothing new), and only after that commit delete or move the message; a
   message that holds none is kept (or moved to the ``unparsed`` folder);
3. expunge (IMAP) or QUIT (POP3: the server deletes only then).

A crash between a commit and the deletion leaves the message for the next
pass, whose records are replays: reading is at least once, recording exactly once.
"""

from __future__ import annotations

import contextlib
import imaplib
import poplib
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured
from django.db import transaction

from campaigns import bounces, dsn

PROVIDER = "mailbox"
_PORTS = {"imap": 143, "imaps": 993, "pop3": 110, "pop3s": 995}
_OPTIONS = {"starttls", "timeout", "processed", "unparsed"}
# poplib refuses lines over 2,048 bytes, and mail servers do deliver longer ones (HTML bodies).
poplib._MAXLINE = max(poplib._MAXLINE, 1 << 20)  # type: ignore[attr-defined]


class MailboxError(Exception):
    """The mailbox cannot be read (connection, TLS, login, folder); the message is one line, without the password."""


_ERRORS = (OSError, imaplib.IMAP4.error, poplib.error_proto, MailboxError)


@dataclass(frozen=True)
class Mailbox:
    scheme: str
    host: str
    port: int
    username: str
    password: str
    folder: str = "INBOX"
    processed: str = ""
    unparsed: str = ""
    starttls: bool = False
    timeout: float = 30.0

    def __str__(self) -> str:
        return f"{self.scheme}://{self.username}@{self.host}:{self.port}"


@dataclass
class Summary:
    """What one pass did."""

    messages: int = 0
    recorded: int = 0  # new events
    replayed: int = 0  # reports that were already recorded
    removed: int = 0  # messages deleted or moved to the processed folder
    unparsed: int = 0  # messages with no report we understand, kept or moved aside

    def __str__(self) -> str:
        return (
            f"{self.messages} messages: {self.recorded} events recorded, {self.replayed} already recorded, "
            f"{self.removed} removed, {self.unparsed} not understood"
        )


def parse_url(url: str) -> Mailbox:
    """The mailbox a ``BOUNCE_MAILBOX_URL`` names; ImproperlyConfigured, never showing the password, if malformed."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _PORTS:
        raise ImproperlyConfigured("BOUNCE_MAILBOX_URL must start with imap://, imaps://, pop3:// or pop3s://")
    try:
        port = parts.port or _PORTS[scheme]
    except ValueError as exc:
        raise ImproperlyConfigured("BOUNCE_MAILBOX_URL has an invalid port") from exc
    if not parts.hostname or not parts.username or parts.password is None:
        raise ImproperlyConfigured(
            f"BOUNCE_MAILBOX_URL must name a user, a password and a host: {scheme}://user:password@host"
        )
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - _OPTIONS
    if unknown:
        raise ImproperlyConfigured(f"BOUNCE_MAILBOX_URL has unknown options: {', '.join(sorted(unknown))}")
    folder = unquote(parts.path.strip("/"))
    processed, unparsed = query.get("processed", ""), query.get("unparsed", "")
    if scheme.startswith("pop3") and (processed or unparsed or folder):
        raise ImproperlyConfigured("BOUNCE_MAILBOX_URL: POP3 has no folders (processed, unparsed or a path need IMAP)")
    starttls = query.get("starttls", "false").lower()
    if starttls not in {"true", "false", "1", "0", "yes", "no"}:
        raise ImproperlyConfigured("BOUNCE_MAILBOX_URL: starttls must be true or false")
    if starttls in {"true", "1", "yes"} and scheme.endswith("s"):
        raise ImproperlyConfigured(
            f"BOUNCE_MAILBOX_URL: {scheme}:// is TLS already; starttls is for imap:// and pop3://"
        )
    try:
        timeout = float(query.get("timeout", "30"))
    except ValueError as exc:
        raise ImproperlyConfigured("BOUNCE_MAILBOX_URL: timeout must be a number of seconds") from exc
    if not 0 < timeout < float("inf"):  # also NaN: the socket would refuse it only when connecting
        raise ImproperlyConfigured("BOUNCE_MAILBOX_URL: timeout must be a positive number of seconds")
    return Mailbox(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username),
        password=unquote(parts.password),
        folder=folder or "INBOX",
        processed=processed,
        unparsed=unparsed,
        starttls=starttls in {"true", "1", "yes"},
        timeout=timeout,
    )


def read_once(mailbox: Mailbox) -> Summary:
    """Read every message in the mailbox once: record, then remove what was understood."""
    summary = Summary()
    try:
        client: _Client = _IMAP(mailbox) if mailbox.scheme.startswith("imap") else _POP3(mailbox)
    except _ERRORS as exc:
        raise MailboxError(f"{mailbox}: {_reason(exc)}") from exc
    try:
        for ref, raw in client.messages():
            summary.messages += 1
            if _record(raw, summary):
                client.remove(ref)
                summary.removed += 1
            else:
                client.set_aside(ref)
                summary.unparsed += 1
        client.finish()
    except _ERRORS as exc:
        client.abort()
        raise MailboxError(f"{mailbox}: {_reason(exc)}") from exc
    except BaseException:
        client.abort()
        raise
    return summary


def _record(raw: bytes, summary: Summary) -> bool:
    """Record the message's reports, committed before this returns; False when it holds none."""
    reports = dsn.parse(raw, provider=PROVIDER)
    if not reports:
        return False
    with transaction.atomic():
        events = [bounces.record(report) for report in reports]
    summary.recorded += sum(event is not None for event in events)
    summary.replayed += sum(event is None for event in events)
    return True


def _reason(exc: BaseException) -> str:
    """One line saying what went wrong (imaplib and poplib put the server's bytes in their errors)."""
    text = str(exc.args[0] if len(exc.args) == 1 else exc) if exc.args else type(exc).__name__
    if text.startswith(("b'", 'b"')):
        text = text[2:-1]
    if isinstance(exc, ssl.SSLError | TimeoutError | ConnectionError) or not text:
        text = f"{type(exc).__name__}: {text or exc}"
    return " ".join(text.split())


class _Client(Protocol):
    def messages(self) -> Iterator[tuple[str, bytes]]: ...
    def remove(self, ref: str) -> None: ...
    def set_aside(self, ref: str) -> None: ...
    def finish(self) -> None: ...
    def abort(self) -> None: ...


class _IMAP:
    """IMAP4rev1: UID SEARCH UNDELETED, UID FETCH BODY.PEEK[], then UID MOVE or \\Deleted and EXPUNGE."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        context = ssl.create_default_context()
        if mailbox.scheme == "imaps":
            self.conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                mailbox.host, mailbox.port, ssl_context=context, timeout=mailbox.timeout
            )
        else:
            self.conn = imaplib.IMAP4(mailbox.host, mailbox.port, timeout=mailbox.timeout)
        try:
            if mailbox.starttls:
                self.conn.starttls(ssl_context=context)
            self.conn.login(mailbox.username, mailbox.password)
            for folder in {mailbox.processed, mailbox.unparsed} - {""}:
                self.conn.create(_quoted(folder))  # NO when it exists already: fine
            _check(self.conn.select(_quoted(mailbox.folder)), f"cannot open folder {mailbox.folder!r}")
            # Servers announce MOVE only once logged in, and imaplib keeps the greeting's list.
            capabilities = _check(self.conn.capability(), "CAPABILITY failed")
        except BaseException:
            self.abort()
            raise
        self.can_move = b"MOVE" in b" ".join(c for c in capabilities if isinstance(c, bytes)).upper().split()
        self.expunge = False

    def messages(self) -> Iterator[tuple[str, bytes]]:
        data = _check(self.conn.uid("SEARCH", "UNDELETED"), "SEARCH failed")
        for uid in (data[0] if isinstance(data[0], bytes) else b"").decode().split():
            fetched = _check(self.conn.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH failed")
            raw = next((item[1] for item in fetched if isinstance(item, tuple)), None)
            if isinstance(raw, bytes):  # None: expunged meanwhile by another client
                yield uid, raw

    def remove(self, ref: str) -> None:
        if self.mailbox.processed:
            self._move(ref, self.mailbox.processed)
        else:
            _check(self.conn.uid("STORE", ref, "+FLAGS.SILENT", r"(\Deleted)"), "STORE failed")
            self.expunge = True

    def set_aside(self, ref: str) -> None:
        if self.mailbox.unparsed:
            self._move(ref, self.mailbox.unparsed)

    def _move(self, ref: str, folder: str) -> None:
        if self.can_move:
            _check(self.conn.uid("MOVE", ref, _quoted(folder)), f"cannot move to {folder!r}")
        else:
            _check(self.conn.uid("COPY", ref, _quoted(folder)), f"cannot copy to {folder!r}")
            _check(self.conn.uid("STORE", ref, "+FLAGS.SILENT", r"(\Deleted)"), "STORE failed")
            self.expunge = True

    def finish(self) -> None:
        if self.expunge:
            _check(self.conn.expunge(), "EXPUNGE failed")
        self.conn.logout()

    def abort(self) -> None:
        try:
            self.conn.logout()
        except (OSError, imaplib.IMAP4.error):
            with contextlib.suppress(OSError):  # the original failure is the one to report
                self.conn.shutdown()


class _POP3:
    """POP3: LIST, RETR, DELE; the server deletes at QUIT, so an aborted session deletes nothing."""

    def __init__(self, mailbox: Mailbox) -> None:
        context = ssl.create_default_context()
        if mailbox.scheme == "pop3s":
            self.conn: poplib.POP3 = poplib.POP3_SSL(
                mailbox.host, mailbox.port, timeout=mailbox.timeout, context=context
            )
        else:
            self.conn = poplib.POP3(mailbox.host, mailbox.port, timeout=mailbox.timeout)
        try:
            if mailbox.starttls:
                self.conn.stls(context)
            self.conn.user(mailbox.username)
            self.conn.pass_(mailbox.password)
        except BaseException:
            self.abort()
            raise

    def messages(self) -> Iterator[tuple[str, bytes]]:
        _response, listing, _size = self.conn.list()
        for line in listing:
            number = line.split()[0].decode()
            _response, lines, _size = self.conn.retr(int(number))
            yield number, b"\r\n".join(lines) + b"\r\n"

    def remove(self, ref: str) -> None:
        self.conn.dele(int(ref))

    def set_aside(self, ref: str) -> None:
        pass  # POP3 has no folders: the message stays

    def finish(self) -> None:
        self.conn.quit()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.close()


def _quoted(folder: str) -> str:
    """An IMAP quoted string (imaplib sends arguments as they are)."""
    return '"' + re.sub(r'(["\\])', r"\\\1", folder) + '"'


def _check(result: tuple[str, list[Any]], what: str) -> list[Any]:
    status, data = result
    if status != "OK":
        detail = b" ".join(d for d in data if isinstance(d, bytes)).decode(errors="replace")
        raise MailboxError(f"{what}: {detail}".strip(": "))
    return data
