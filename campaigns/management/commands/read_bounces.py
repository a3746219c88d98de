"""Read the bounce mailbox (BOUNCE_MAILBOX_URL) once, or every --interval seconds until stopped."""

from __future__ import annotations

import signal
import threading
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, close_old_connections

from campaigns import mailbox


class Command(BaseCommand):
    help = (
        "Record the bounces and complaints in the bounce mailbox (IMAP or POP3, BOUNCE_MAILBOX_URL) "
        "and delete the messages read."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--url", help="imaps://user:password@host/INBOX, pop3s://… (default: BOUNCE_MAILBOX_URL)")
        parser.add_argument("--once", action="store_true", help="one pass; exit non-zero if the mailbox cannot be read")
        parser.add_argument("--interval", type=int, default=60, help="seconds between passes (default 60)")

    def handle(self, *args: Any, url: str | None, once: bool, interval: int, **options: Any) -> None:
        url = url or settings.BOUNCE_MAILBOX_URL
        if not url:
            raise CommandError("No bounce mailbox: set BOUNCE_MAILBOX_URL or pass --url")
        if interval < 1:
            raise CommandError("--interval must be at least 1 second")
        try:
            box = mailbox.parse_url(url)
        except ImproperlyConfigured as exc:
            raise CommandError(str(exc)) from exc
        if once:
            try:
                self.stdout.write(f"{box}: {mailbox.read_once(box)}")
            except mailbox.MailboxError as exc:
                raise CommandError(str(exc)) from exc
            return
        self._poll(box, interval)

    def _poll(self, box: mailbox.Mailbox, interval: int) -> None:
        """Pass after pass; a mailbox or database failure is reported and retried after the interval."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        self.stdout.write(f"Reading {box} every {interval}s")
        try:
            while not stop.is_set():
                close_old_connections()  # a database restarted since the last pass gets a new connection
                try:
                    self.stdout.write(f"{box}: {mailbox.read_once(box)}")
                except (mailbox.MailboxError, DatabaseError) as exc:
                    self.stderr.write(f"{' '.join(str(exc).split())} (retrying in {interval}s)")
                stop.wait(interval)
        except KeyboardInterrupt:
            pass
