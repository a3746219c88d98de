"""A real SMTP server for tests: aiosmtpd in a thread, messages kept in memory.

It can be told to answer the next messages with a chosen reply (451, 550, …)
to exercise retries and permanent failures, to answer a given recipient with a
script of replies (or drop the connection instead of answering), and to take a
little time per message, like a real server does.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading
import time
from collections import Counter
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope, Session

# In ``MailServer.answers``: close the connection at the end of DATA without answering,
# as a server that crashes or a network that fails mid-message does.
DROP = "DROP"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Handler:
    def __init__(self, server: MailServer) -> None:
        self.server = server

    async def handle_EHLO(
        self, smtp: Any, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        """Offer PIPELINING (RFC 2920) like Postfix does, unless a test turns it off."""
        session.host_name = hostname
        if self.server.pipelining:
            responses.insert(-1, "250-PIPELINING")
        return responses

    async def handle_MAIL(
        self, smtp: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.server.lock:
            reply = self.server.mail_answers.pop(address.lower(), None)
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, smtp: Any, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self.server.lock:
            reply = self.server.rcpt_answers.pop(address.lower(), None)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, smtp: Any, session: Session, envelope: Envelope) -> str:
        if self.server.delay:
            await asyncio.sleep(self.server.delay)  # yields: other connections go on meanwhile
        with self.server.lock:
            reply = self.server._scripted(list(envelope.rcpt_tos))
            if reply == DROP:
                # abort(), not close(): close() would still flush the reply we return below.
                smtp.transport.abort()
                return "421 4.4.2 Connection dropped"
            if reply:
                return reply
            # Parsed when a test reads ``messages``: parsing here would slow every answer down.
            self.server._raw.append(envelope.original_content or b"")
            self.server.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 OK"


class MailServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.lock = threading.Lock()
        self._raw: list[bytes] = []
        self._parsed: list[EmailMessage] = []
        self.envelopes: list[tuple[str | None, list[str]]] = []
        # Replies for the next messages, whoever they are for ("451 4.3.0 Busy", …).
        self.replies: list[str] = []
        # Replies for the next messages to one recipient, before any in ``replies``; DROP drops the connection.
        self.answers: dict[str, list[str]] = {}
        # Seconds to wait before answering each message.
        self.delay = 0.0
        # One reply to the next MAIL FROM / RCPT TO naming this address ("550 5.1.1 No such user", …).
        self.mail_answers: dict[str, str] = {}
        self.rcpt_answers: dict[str, str] = {}
        # Whether EHLO offers PIPELINING (campaign sends then pipeline MAIL, RCPT and DATA).
        self.pipelining = True
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        """The accepted messages, parsed, oldest first."""
        with self.lock:
            for raw in self._raw[len(self._parsed) :]:
                message = email.message_from_bytes(raw, policy=email.policy.default)
                assert isinstance(message, EmailMessage)
                self._parsed.append(message)
            return list(self._parsed)

    def clear(self) -> None:
        with self.lock:
            self._raw.clear()
            self._parsed.clear()
            self.envelopes.clear()
            self.replies.clear()
            self.answers.clear()
            self.delay = 0.0
            self.pipelining = True
            self.mail_answers.clear()
            self.rcpt_answers.clear()

    def _scripted(self, recipients: list[str]) -> str | None:
        """The reply chosen for this message, if any (call with the lock held)."""
        for address in recipients:
            script = self.answers.get(address.lower())
            if script:
                return script.pop(0)
        if self.replies:
            return self.replies.pop(0)
        return None

    def received(self) -> Counter[str]:
        """How many accepted messages each recipient address got."""
        with self.lock:
            return Counter(address.lower() for _, recipients in self.envelopes for address in recipients)

    def wait_for(self, count: int, timeout: float = 30) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                arrived = len(self._raw)
            if arrived >= count:
                return self.messages
            time.sleep(0.05)
        raise AssertionError(f"expected {count} message(s) within {timeout}s, got {len(self._raw)}")
