"""Send pre-serialised messages over an open ``smtplib.SMTP`` connection, pipelined when offered.

``smtplib.SMTP.sendmail`` waits for the server's reply to each of MAIL, RCPT,
DATA and the message: four round trips per message. When the server offers
PIPELINING (RFC 2920; Postfix and most MTAs do), ``Pipeline`` sends one message's
content and final dot together with the next message's MAIL, RCPT and DATA: one
round trip per message. Each message's outcome is what ``sendmail`` would have
raised for it alone, so callers classify failures the same way whichever path
ran: ``SMTPSenderRefused`` (MAIL), ``SMTPRecipientsRefused`` (RCPT),
``SMTPDataError`` (DATA or the message), ``SMTPServerDisconnected``/``OSError``.
"""

from __future__ import annotations

import contextlib
import re
import smtplib
from typing import Generic, TypeVar

_LEADING_DOT = re.compile(rb"(?m)^\.")
T = TypeVar("T")


def _path(address: str) -> bytes:
    """``<address>`` for MAIL FROM / RCPT TO: a bare ASCII address (``mime.CampaignMessages.build`` makes sure)."""
    if any(ch in address for ch in "<>\r\n "):
        raise ValueError(f"not a bare address: {address!r}")
    return f"<{address}>".encode("ascii")


Outcome = tuple[T, Exception | None]


class Pipeline(Generic[T]):
    """Messages over one connection, one round trip each when the server offers PIPELINING.

    ``submit`` writes the previous message's content and end-of-data dot together
    with this message's MAIL, RCPT and DATA, then reads the previous message's
    final reply and this one's three envelope replies (RFC 2920, section 3.1's
    example does exactly this). So each call returns the outcomes it learned: the
    previous message's and, when its envelope was refused, this one's; ``flush``
    ends the last message. An outcome is ``(tag, None)`` when the server took the
    message, else ``(tag, exception)`` with the exception ``sendmail`` would have
    raised for that one message; when the connection breaks, every message in
    flight gets the ``SMTPServerDisconnected``/``OSError`` (its fate is unknown).
    Without PIPELINING each message goes through ``sendmail``.
    """

    def __init__(self, connection: smtplib.SMTP) -> None:
        self.connection = connection
        connection.ehlo_or_helo_if_needed()
        self.pipelining = bool(connection.does_esmtp and connection.has_extn("pipelining"))
        # The message whose DATA was answered 354 and whose content is not sent yet.
        self._open: tuple[T, bytes] | None = None

    def submit(self, tag: T, envelope_from: str, recipient: str, data: bytes) -> list[Outcome[T]]:
        """Send one message (CRLF line ends) from ``envelope_from`` to ``recipient``."""
        if not self.pipelining:
            try:
                self.connection.sendmail(envelope_from, [recipient], data)
            except (smtplib.SMTPException, OSError) as exc:
                return [(tag, exc)]
            return [(tag, None)]
        done: list[Outcome[T]] = []
        previous, self._open = self._open, None
        envelope = b"MAIL FROM:" + _path(envelope_from) + b"\r\nRCPT TO:" + _path(recipient) + b"\r\nDATA\r\n"
        try:
            self.connection.send((_content(previous[1]) if previous else b"") + envelope)
            if previous is not None:
                code, reply = self.connection.getreply()
                if code != 250:
                    # A refused message ends its transaction; the server reads our envelope next (no RSET:
                    # it would reset the envelope already on its way), unless it is closing (421).
                    done.append((previous[0], smtplib.SMTPDataError(code, reply)))
                    if code == 421:
                        self.connection.close()
                        done.append((tag, smtplib.SMTPServerDisconnected("the server closed the connection (421)")))
                        return done
                else:
                    done.append((previous[0], None))
                previous = None
            mail = self.connection.getreply()
            rcpt = self.connection.getreply()
            start = self.connection.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            if previous is not None:
                done.append((previous[0], exc))
            done.append((tag, exc))
            return done
        error = _envelope_error(self.connection, envelope_from, recipient, mail, rcpt, start)
        if error is None:
            self._open = (tag, data)
        else:
            done.append((tag, error))
        return done

    def flush(self) -> list[Outcome[T]]:
        """End the last message and return its outcome."""
        previous, self._open = self._open, None
        if previous is None:
            return []
        try:
            self.connection.send(_content(previous[1]))
            code, reply = self.connection.getreply()
        except (smtplib.SMTPServerDisconnected, OSError) as exc:
            return [(previous[0], exc)]
        if code == 250:
            return [(previous[0], None)]
        if code == 421:
            self.connection.close()
        return [(previous[0], smtplib.SMTPDataError(code, reply))]


def send(connection: smtplib.SMTP, envelope_from: str, recipient: str, data: bytes) -> None:
    """One message, raising what ``sendmail`` would (a ``Pipeline`` of one)."""
    pipeline: Pipeline[None] = Pipeline(connection)
    for _, error in [*pipeline.submit(None, envelope_from, recipient, data), *pipeline.flush()]:
        if error is not None:
            raise error


def _content(data: bytes) -> bytes:
    """The message as sent after a 354: dot-stuffed (RFC 5321 4.5.2), CRLF-terminated, then the final dot."""
    # The regex costs ~40 µs on a 14 KB message, the test for a line starting with a dot ~10.
    body = _LEADING_DOT.sub(b"..", data) if data.startswith(b".") or b"\n." in data else data
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def _envelope_error(
    connection: smtplib.SMTP,
    envelope_from: str,
    recipient: str,
    mail: tuple[int, bytes],
    rcpt: tuple[int, bytes],
    start: tuple[int, bytes],
) -> Exception | None:
    """None when MAIL, RCPT and DATA were accepted; else reset (or close) and return ``sendmail``'s exception."""
    envelope_ok = mail[0] == 250 and rcpt[0] in (250, 251)
    if start[0] == 354 and envelope_ok:
        return None
    try:
        if start[0] == 354:
            # The server accepted DATA although the envelope failed: end the empty message before resetting.
            connection.send(b".\r\n")
            connection.getreply()
        _reset_or_close(connection, 421 if 421 in (mail[0], rcpt[0], start[0]) else mail[0])
    except (smtplib.SMTPServerDisconnected, OSError):
        pass  # the next message finds the connection gone and reconnects
    if mail[0] != 250:
        return smtplib.SMTPSenderRefused(mail[0], mail[1], envelope_from)
    if not envelope_ok:
        return smtplib.SMTPRecipientsRefused({recipient: rcpt})
    return smtplib.SMTPDataError(start[0], start[1])


def _reset_or_close(connection: smtplib.SMTP, code: int) -> None:
    """As ``sendmail`` does after a failure: close on 421 (the server is going away), else RSET."""
    if code == 421:
        connection.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        connection.rset()
