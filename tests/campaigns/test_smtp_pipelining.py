"""campaigns/smtp.py against a real SMTP server (aiosmtpd), with and without PIPELINING.

Whichever path runs, the outcome and the exceptions must be those of
``smtplib.SMTP.sendmail`` for one recipient: the delivery code classifies
failures (retry or failed) from them.
"""

from __future__ import annotations

import contextlib
import smtplib
from collections.abc import Iterator

import pytest

from campaigns import smtp
from tests.mailserver import MailServer

MESSAGE = (
    b"From: Brand <news@brand.example>\r\nTo: <ann@example.com>\r\nSubject: Hi\r\n\r\n"
    b"First line\r\n.starts with a dot\r\n..two dots\r\nlast line without newline"
)


@pytest.fixture(params=[True, False], ids=["pipelined", "one-by-one"])
def server(mail_server: MailServer, request: pytest.FixtureRequest) -> Iterator[MailServer]:
    mail_server.clear()
    mail_server.pipelining = request.param
    yield mail_server
    mail_server.clear()


@pytest.fixture
def connection(server: MailServer) -> Iterator[smtplib.SMTP]:
    conn = smtplib.SMTP("127.0.0.1", server.port, timeout=10)
    yield conn
    with contextlib.suppress(smtplib.SMTPServerDisconnected):
        conn.quit()


def test_it_delivers_the_bytes_with_leading_dots_intact(server: MailServer, connection: smtplib.SMTP) -> None:
    smtp.send(connection, "bounces+d1.x@brand.example", "ann@example.com", MESSAGE)
    smtp.send(connection, "bounces+d2.x@brand.example", "bob@example.com", MESSAGE)

    assert connection.has_extn("pipelining") is server.pipelining
    assert server.envelopes == [
        ("bounces+d1.x@brand.example", ["ann@example.com"]),
        ("bounces+d2.x@brand.example", ["bob@example.com"]),
    ]
    body = server.messages[0].get_content()
    assert body.splitlines() == ["First line", ".starts with a dot", "..two dots", "last line without newline"]


@pytest.mark.parametrize("reply", ["550 5.1.1 No such user", "451 4.3.0 Try later"])
def test_a_refused_recipient_raises_recipients_refused_and_the_connection_goes_on(
    server: MailServer, connection: smtplib.SMTP, reply: str
) -> None:
    server.rcpt_answers["gone@example.com"] = reply

    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        smtp.send(connection, "news@brand.example", "gone@example.com", MESSAGE)

    code, text = refused.value.recipients["gone@example.com"]
    assert (code, text.decode()) == (int(reply[:3]), reply[4:])
    smtp.send(connection, "news@brand.example", "ann@example.com", MESSAGE)  # RSET left it usable
    assert [rcpts for _, rcpts in server.envelopes] == [["ann@example.com"]]


def test_a_refused_sender_raises_sender_refused(server: MailServer, connection: smtplib.SMTP) -> None:
    server.mail_answers["news@brand.example"] = "553 5.7.1 Sender not allowed"

    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.send(connection, "news@brand.example", "ann@example.com", MESSAGE)

    assert refused.value.smtp_code == 553
    assert server.envelopes == []


def test_a_server_going_away_at_mail_closes_the_connection(server: MailServer, connection: smtplib.SMTP) -> None:
    server.mail_answers["news@brand.example"] = "421 4.3.2 Shutting down"

    with pytest.raises(smtplib.SMTPSenderRefused) as refused:
        smtp.send(connection, "news@brand.example", "ann@example.com", MESSAGE)

    assert refused.value.smtp_code == 421
    assert connection.sock is None  # closed, as sendmail does; the caller reconnects


@pytest.mark.parametrize("reply", ["554 5.6.0 Message refused", "452 4.3.1 Out of space"])
def test_a_refused_message_raises_data_error(server: MailServer, connection: smtplib.SMTP, reply: str) -> None:
    server.replies.append(reply)

    with pytest.raises(smtplib.SMTPDataError) as refused:
        smtp.send(connection, "news@brand.example", "ann@example.com", MESSAGE)

    assert refused.value.smtp_code == int(reply[:3])
    smtp.send(connection, "news@brand.example", "ann@example.com", MESSAGE)
    assert len(server.envelopes) == 1


def test_a_dropped_connection_raises_server_disconnected(server: MailServer, connection: smtplib.SMTP) -> None:
    server.answers["ann@example.com"] = ["DROP"]

    with pytest.raises(smtplib.SMTPServerDisconnected):
        smtp.send(connection, "news@brand.example", "ann@example.com", MESSAGE)
    assert server.envelopes == []


# --- A pipeline of several messages: each outcome belongs to its own message ------------------------


def run(connection: smtplib.SMTP, recipients: list[str]) -> dict[str, str]:
    """Send one message to each recipient through one Pipeline; what happened to each, by recipient."""
    pipeline: smtp.Pipeline[str] = smtp.Pipeline(connection)
    outcomes = []
    for address in recipients:
        outcomes += pipeline.submit(address, "news@brand.example", address, MESSAGE)
    outcomes += pipeline.flush()
    assert sorted(tag for tag, _ in outcomes) == sorted(recipients)  # exactly one outcome per message
    return {tag: "ok" if error is None else type(error).__name__ for tag, error in outcomes}


def test_a_pipeline_attributes_each_failure_to_its_own_message(server: MailServer, connection: smtplib.SMTP) -> None:
    server.rcpt_answers["gone@example.com"] = "550 5.1.1 No such user"
    server.answers["full@example.com"] = ["552 5.2.2 Mailbox full"]

    outcomes = run(connection, ["ann@example.com", "gone@example.com", "full@example.com", "bob@example.com"])

    assert outcomes == {
        "ann@example.com": "ok",
        "gone@example.com": "SMTPRecipientsRefused",
        "full@example.com": "SMTPDataError",
        "bob@example.com": "ok",
    }
    assert [rcpts for _, rcpts in server.envelopes] == [["ann@example.com"], ["bob@example.com"]]


def test_a_dropped_connection_fails_only_the_messages_in_flight(server: MailServer, connection: smtplib.SMTP) -> None:
    server.answers["cut@example.com"] = ["DROP"]

    outcomes = run(connection, ["ann@example.com", "cut@example.com", "bob@example.com", "cy@example.com"])

    assert outcomes["ann@example.com"] == "ok"
    assert outcomes["cut@example.com"] == "SMTPServerDisconnected"
    # Pipelined, the next message's envelope was on the wire when the connection broke; later ones never left.
    assert outcomes["bob@example.com"] == "SMTPServerDisconnected"
    assert outcomes["cy@example.com"] in {
        "SMTPServerDisconnected",
        "OSError",
        "ConnectionResetError",
        "BrokenPipeError",
    }
    assert [rcpts for _, rcpts in server.envelopes] == [["ann@example.com"]]
