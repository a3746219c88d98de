"""Send one pre-serialised message over an open ``smtplib.SMTP`` connection, pipelined when offered.

``smtplib.SMTP.sendmail`` waits for the server's reply to each of MAIL, RCPT,
DATA and the message: four round trips per message. When the server offers
PIPELINING (RFC 2920; Postfix and most MTAs do), ``send`` writes MAIL, RCPT and
DATA at once and reads their three replies, then the message: two round trips.
The outcome, and the exceptions on failure, are those of ``sendmail`` for one
recipient, so callers classify failures the same way whichever path ran:
``SMTPSenderRefused`` (MAIL), ``SMTPRecipientsRefused`` (RCPT),
``SMTPDataError`` (DATA or the message), ``SMTPServerDisconnected``.
"""

from __future__ import annotations

import contextlib
import re
import smtplib

_LEADING_DOT = re.compile(rb"(?m)^\.")


def _path(address: str) -> bytes:
    """``<address>`` for MAIL FROM / RCPT TO: a bare ASCII address (``mime.CampaignMessages.build`` makes sure)."""
    if any(ch in address for ch in "<>\r\n "):
        raise ValueError(f"not a bare address: {address!r}")
    return f"<{address}>".encode("ascii")


def send(connection: smtplib.SMTP, envelope_from: str, recipient: str, data: bytes) -> None:
    """Send ``data`` (CRLF line ends) from ``envelope_from`` to ``recipient``; raise as ``sendmail`` would."""
    connection.ehlo_or_helo_if_needed()
    if not (connection.does_esmtp and connection.has_extn("pipelining")):
        connection.sendmail(envelope_from, [recipient], data)
        return
    connection.send(b"MAIL FROM:" + _path(envelope_from) + b"\r\nRCPT TO:" + _path(recipient) + b"\r\nDATA\r\n")
    mail = connection.getreply()
    rcpt = connection.getreply()
    start = connection.getreply()
    envelope_ok = mail[0] == 250 and rcpt[0] in (250, 251)
    if start[0] == 354 and envelope_ok:
        body = _LEADING_DOT.sub(b"..", data)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        connection.send(body + b".\r\n")
        code, reply = connection.getreply()
        if code == 250:
            return
        _reset_or_close(connection, code)
        raise smtplib.SMTPDataError(code, reply)
    if start[0] == 354:
        # The server accepted DATA although the envelope failed: end the empty message before resetting.
        connection.send(b".\r\n")
        connection.getreply()
    _reset_or_close(connection, 421 if 421 in (mail[0], rcpt[0], start[0]) else mail[0])
    if mail[0] != 250:
        raise smtplib.SMTPSenderRefused(mail[0], mail[1], envelope_from)
    if not envelope_ok:
        raise smtplib.SMTPRecipientsRefused({recipient: rcpt})
    raise smtplib.SMTPDataError(start[0], start[1])


def _reset_or_close(connection: smtplib.SMTP, code: int) -> None:
    """As ``sendmail`` does after a failure: close on 421 (the server is going away), else RSET."""
    if code == 421:
        connection.close()
        return
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        connection.rset()
